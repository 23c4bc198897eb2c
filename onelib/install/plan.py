"""What ``one-tweaks install`` puts on a front-end: the drivers, their oned.conf settings,
the executables and the VMM local overrides.

Nothing here imports the driver packages (``datastore``, ``tm``, ``vmm``, ``tweaks``): the
actions are the modules found in their ``actions`` directories, and the drivers and their
oned.conf settings are the storage backends' declarations, read as text (``declared``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from ..errors import DriverError
from . import declared
from .declared import DriverConf


def driver_conf(driver: str) -> DriverConf:
    """The oned.conf settings a backend declares for ``driver`` (install refuses to guess)."""
    confs = declared.driver_confs()
    if driver not in confs:
        raise DriverError(f"no storage backend declares the driver {driver!r} (datastore/backends/)")
    return confs[driver]


def __getattr__(name: str) -> Any:
    if name == "DRIVER_CONF":  # every backend's declaration, by driver name
        return declared.driver_confs()
    if name == "VMM_ALIASES":
        return vmm_aliases()
    raise AttributeError(name)


# one_datastore.rb's SYSTEM_DS_TYPES: what "-s" means when the option is absent. Adding a
# driver to an absent -s must keep these.
DEFAULT_SYSTEM_DS = ("shared", "ssh", "ceph")

# VMM local overrides: oned's -l key, the vmm.actions module(s) that implement it (first
# found wins) and the script name under remotes/vmm/kvm/. The script names never reuse
# OpenNebula's own vmm/kvm script names (save, restore, migrate, attach_disk, ...): those
# files are the stock remote scripts that `onehost sync` copies to the hosts and that the
# overrides themselves run there, so installing an override under the same name would
# replace them. A key enters the -l list only when its module exists.
VMM_OVERRIDES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("deploy", ("deploy_tweaks", "deploy"), "deploy-tweaks"),
    ("save", ("save",), "save-tweaks"),
    ("restore", ("restore",), "restore-tweaks"),
    ("migrate", ("migrate",), "migrate-tweaks"),
    ("attach_disk", ("attach_disk",), "attach_disk-tweaks"),
    ("attach_nic", ("attach_nic",), "attach_nic-tweaks"),
    ("detach_disk", ("detach_disk",), "detach_disk-tweaks"),
    ("snapshotcreate", ("snapshot_create", "snapshotcreate"), "snapshot_create-tweaks"),
    ("snapshotrevert", ("snapshot_revert", "snapshotrevert"), "snapshot_revert-tweaks"),
    ("snapshotdelete", ("snapshot_delete", "snapshotdelete"), "snapshot_delete-tweaks"),
    ("resize_disk", ("resize_disk",), "resize_disk-tweaks"),
)

def vmm_aliases() -> dict[str, str]:
    """Script names the seed add-ons put in -l (value: the -l key they serve), as every
    backend declares them (``vmm_aliases``), installed as aliases of our override for that
    key so that existing oned.conf lines keep working (and are accepted as configured). An
    alias runs vmm.actions.<its name by vmm/entry.py's rule> when vmm provides such a module,
    else the key's own module."""
    out: dict[str, str] = {}
    for conf in declared.driver_confs().values():
        out.update(conf.vmm_aliases)
    return out


# OpenNebula's own remotes/vmm/kvm scripts (6.10-7.x); never overwritten by a script of
# ours that has no VMM_OVERRIDES entry.
STOCK_KVM_SCRIPTS = frozenset({
    "attach_disk", "attach_nic", "backup", "backup_cancel", "cancel", "deploy", "detach_disk", "detach_nic",
    "migrate", "migrate_local", "poll", "prereconfigure", "reboot", "reconfigure", "reset", "resize",
    "resize_disk", "restore", "restore.ceph", "save", "save.ceph", "shutdown", "snapshot_create",
    "snapshot_delete", "snapshot_revert", "update_conf", "update_nic", "update_sg", "resize_nic",
})

# VM attributes of the shipped tweak rules that oned must keep away from users outside
# the oneadmin group (VM_RESTRICTED_ATTR). The line drawn: an attribute is restricted when
# it reaches beyond the VM itself, i.e. it picks a file or device on the host, claims CPU
# or memory of the host beyond what the scheduler accounted, changes the VM's share of the
# host against other tenants' VMs, or sets an identity others rely on. Attributes whose
# effect stays inside the guest (CPU model and topology, Hyper-V enlightenments, queue
# counts, SMBIOS strings, video model, disk serials, CD-ROM slots, SMM, secure boot) are
# left to VM owners, like OpenNebula's own CPU_MODEL, FEATURES and VIRTIO_QUEUES.
RESTRICTED_T_ATTRS: tuple[tuple[str, str], ...] = (
    # host firmware and NVRAM files/volumes (addon-storpool told operators to restrict T_OS)
    ("T_OS_LOADER", "picks a firmware file on the host"),
    ("T_OS_NVRAM", "picks where the NVRAM lives on the host or the storage"),
    ("T_OS", "switches the host firmware auto-selection"),
    # host CPU time against the other VMs on the host
    ("T_CPUTUNE_SHARES", "sets the VM's CPU weight against other VMs on the host"),
    ("T_CPUTUNE_MUL", "scales the VM's CPU weight against other VMs on the host"),
    ("T_CPUTUNE_SHARES_KEEP", "keeps a CPU weight the operator's rules drop"),
    ("T_CPUTUNE_PERIOD", "CPU bandwidth limit"),
    ("T_CPUTUNE_QUOTA", "CPU bandwidth limit"),
    ("T_CPUTUNE_GLOBAL_PERIOD", "CPU bandwidth limit"),
    ("T_CPUTUNE_GLOBAL_QUOTA", "CPU bandwidth limit"),
    ("T_CPUTUNE_EMULATOR_PERIOD", "CPU bandwidth limit"),
    ("T_CPUTUNE_EMULATOR_QUOTA", "CPU bandwidth limit"),
    ("T_CPUTUNE_IOTHREAD_PERIOD", "CPU bandwidth limit"),
    ("T_CPUTUNE_IOTHREAD_QUOTA", "CPU bandwidth limit"),
    # host memory and vCPUs beyond what oned's scheduler accounted (balloon mode boots
    # the VM with T_MEMORY_MAX and lets the guest take it back)
    ("T_MEMORY_MAX", "host memory beyond the VM's MEMORY"),
    ("T_VCPU_MAX", "host vCPUs beyond the VM's VCPU"),
    # identities on shared networks and in libvirt
    ("T_VF_MACS", "MAC addresses of SR-IOV functions on the physical network (like NIC/MAC)"),
    ("T_UUID", "the libvirt domain UUID, unique per host and used to find the VM"),
)


def restricted_attrs(drivers: list[str]) -> list[tuple[str, str]]:
    """(oned.conf attribute, value) lines install adds."""
    out = [("VM_RESTRICTED_ATTR", name) for name, _ in RESTRICTED_T_ATTRS]
    for driver in drivers:
        out += [r for r in driver_conf(driver).restricted if r not in out]
    return out


# --- discovery ---------------------------------------------------------------------------


def package_dir(package: str) -> str | None:
    """Directory of a top-level package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def actions(package: str) -> list[str]:
    """The action modules of ``<package>.actions`` (non-underscore modules); [] when the
    package or its actions directory does not exist."""
    base = package_dir(package)
    if base is None:
        return []
    directory = os.path.join(base, "actions")
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    names = set()
    for entry in entries:
        if entry.startswith(("_", ".")):
            continue
        path = os.path.join(directory, entry)
        if entry.endswith(".py") and os.path.isfile(path):
            names.add(entry[:-3])
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            names.add(entry)
    return sorted(names)


def has_actions_package(package: str) -> bool:
    base = package_dir(package)
    return base is not None and os.path.isfile(os.path.join(base, "actions", "__init__.py"))


def known_drivers() -> list[str]:
    """The drivers the storage backends declare (datastore/backends/, read as text)."""
    return sorted(declared.driver_confs())


def drivers() -> list[str]:
    names = known_drivers()
    confs = declared.driver_confs()
    missing = [d for d in names if d not in confs]
    if missing:
        raise DriverError(f"no oned.conf settings known for driver(s) {', '.join(missing)}: "
                          "declare them in the driver's backend module (datastore/backends/)")
    return names


def vmm_module_of(script: str) -> str:
    """The vmm.actions module ``vmm/entry.py`` runs for a script name (its rule:
    the part before the first dot, dashes as underscores)."""
    return script.split(".", 1)[0].replace("-", "_")


# --- executables -------------------------------------------------------------------------


@dataclass
class Plan:
    interpreter: str
    drivers: list[str]
    scripts: dict[str, str] = field(default_factory=dict)  # path under remotes -> content
    vmm_l: dict[str, str] = field(default_factory=dict)  # -l key -> our script name
    vmm_accepted: dict[str, set[str]] = field(default_factory=dict)  # -l key -> names that run our code
    vmm_missing: list[tuple[str, str]] = field(default_factory=list)  # (-l key, module) not in this build
    restricted: list[tuple[str, str]] = field(default_factory=list)


def executable(interpreter: str, module: str, function: str, argument: str | None = None) -> str:
    call = f"{function}()" if argument is None else f"{function}({argument!r})"
    return f"#!{interpreter}\nfrom {module} import {function}\n{call}\n"


def interpreter() -> str:
    """This environment's Python: oned's scripts must use it whatever python3 is on PATH
    (Debian 12 forbids installing the package into the system Python, PEP 668)."""
    exe = sys.executable
    if not exe or not os.path.isabs(exe):
        raise DriverError("cannot tell which Python runs one-tweaks (sys.executable is empty)")
    return exe


def build(python: str | None = None) -> Plan:
    python = python or interpreter()
    plan = Plan(python, drivers())
    tm_actions, ds_actions = actions("tm"), actions("datastore")
    for driver in plan.drivers:
        for action in tm_actions:
            plan.scripts[f"tm/{driver}/{action}"] = executable(python, "tm.entry", "tm_main")
        for action in ds_actions:
            plan.scripts[f"datastore/{driver}/{action}"] = executable(python, "datastore.entry", "ds_main")
    if has_actions_package("vmm"):
        vmm_actions = set(actions("vmm"))
        covered: set[str] = set()
        for key, modules, script in VMM_OVERRIDES:
            module = next((m for m in modules if m in vmm_actions), None)
            if module is None:
                plan.vmm_missing.append((key, modules[0]))
                continue
            covered.add(module)
            plan.scripts[f"vmm/kvm/{script}"] = _vmm_executable(python, script, module)
            plan.vmm_l[key] = script
            plan.vmm_accepted[key] = {script}
            for alias, target in vmm_aliases().items():
                if target == key:
                    alias_module = vmm_module_of(alias) if vmm_module_of(alias) in vmm_actions else module
                    covered.add(alias_module)
                    plan.scripts[f"vmm/kvm/{alias}"] = _vmm_executable(python, alias, alias_module)
                    plan.vmm_accepted[key].add(alias)
        for module in sorted(vmm_actions - covered):
            if module not in STOCK_KVM_SCRIPTS:
                plan.scripts[f"vmm/kvm/{module}"] = _vmm_executable(python, module, module)
    else:
        plan.vmm_missing = [(key, modules[0]) for key, modules, _ in VMM_OVERRIDES]
    plan.restricted = restricted_attrs(plan.drivers)
    return plan


def _vmm_executable(python: str, script: str, module: str) -> str:
    # vmm_main(path) acts as the script at ``path``: used when the name does not lead to
    # the module by vmm/entry.py's rule (aliases, "-tweaks" names of plain modules).
    argument = None if vmm_module_of(script) == module else module
    return executable(python, "vmm.entry", "vmm_main", argument)
