"""OpenNebula plumbing shared by the drivers: driver-action payloads, oned's XML-RPC API,
host commands, configuration, errors and logging. Imports nothing from ``tweaks`` or
the storage backends."""
