"""one-tweaks: rewrite OpenNebula's libvirt domain XML from operator-written YAML rules."""

__version__ = "0.1.0"
