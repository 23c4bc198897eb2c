"""VMM override actions, one module each; the executable name maps to the module name
with ``-`` replaced by ``_`` (``deploy-tweaks`` -> ``deploy_tweaks``)."""
