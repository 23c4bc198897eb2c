"""Installer, doctor and uninstaller of the drivers on an OpenNebula front-end
(``one-tweaks install|doctor|uninstall``; see ``cli``). Imports no driver code: the
actions are found by listing the packages' ``actions`` directories."""
