"""The storage side's facts for the tweak rules (``tweaks.facts``: ``storage.*``,
``system_ds.*``, ``disk.storage_*``), so the engine never has to know a storage driver.

- ``storage.tm_mads``: every TM_MAD a backend module declares (``datastore.backends``);
  ``storage.block_tm_mads`` / ``storage.network_tm_mads``: those whose volumes hosts see as
  block devices / libvirt reaches over the network (``Backend.disk_form``); ``storage.px``:
  ONE_PX, when the configuration is at hand.
- ``system_ds.ID``, ``system_ds.NAME``, ``system_ds.TM_MAD`` and ``system_ds.<ATTR>`` for every
  TEMPLATE attribute of the VM's system datastore, when its document is at hand (the deploy
  hook has it: it ships it to the host as ``ds.xml``).
- per disk kept by a backend (its own TM_MAD, or the system datastore's for volatile and
  context disks): ``storage_form`` (``block`` or ``network``).
- what a network backend adds itself (``Backend.facts``: e.g. volume names, monitors).

The deploy hook passes them to the engine (``vmm.actions.deploy_tweaks``); ``one-tweaks apply``
gets them through the ``one_tweaks.facts`` entry point (``supplier``). Only network backends
are imported here (their ``facts``); the others' declarations are read as text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backends import backend_class, disk_forms

if TYPE_CHECKING:
    from lxml import etree

    from onelib.config import Config

Supplied = tuple[dict[str, str], dict[str, dict[str, str]]]


def _text(el: etree._Element, path: str) -> str:
    # not onelib.xmldoc: `one-tweaks apply` reaches this module on every run, and three more
    # modules to load cost it more than the facts themselves
    return (el.findtext(path) or "").strip()


def storage_facts(vm: etree._Element | None, datastore: etree._Element | None = None,
                  config: Config | None = None) -> Supplied:
    forms = disk_forms()
    scalars = {
        "storage.tm_mads": ",".join(sorted(forms)),
        "storage.block_tm_mads": ",".join(sorted(d for d, f in forms.items() if f == "block")),
        "storage.network_tm_mads": ",".join(sorted(d for d, f in forms.items() if f == "network")),
    }
    if config is not None:
        scalars["storage.px"] = config.get("ONE_PX") or "one"
    if datastore is not None:
        from onelib import xmldoc

        for tag in ("ID", "NAME", "TM_MAD"):
            scalars[f"system_ds.{tag}"] = _text(datastore, tag)
        for name, value in xmldoc.template_attrs(datastore.find("TEMPLATE")).items():
            scalars.setdefault(f"system_ds.{name}", value)
    disks: dict[str, dict[str, str]] = {}
    if vm is not None:
        history = vm.findall("HISTORY_RECORDS/HISTORY")
        system_tm = _text(history[-1], "TM_MAD") if history else ""
        template = vm.find("TEMPLATE")
        entries: list[tuple[str, str, bool]] = []  # (disk id, own TM_MAD, on the system datastore)
        for disk in template.iterfind("DISK") if template is not None else ():
            volatile = _text(disk, "TYPE").upper() in ("FS", "SWAP")
            entries.append((_text(disk, "DISK_ID"), _text(disk, "TM_MAD"), volatile))
        context_id = _text(vm, "TEMPLATE/CONTEXT/DISK_ID")
        if context_id:
            entries.append((context_id, "", True))
        kept: dict[str, list[str]] = {}  # TM_MAD -> its disks
        for disk_id, own, system in entries:
            tm_mad = own or (system_tm if system else "")
            if disk_id and tm_mad in forms:
                disks[disk_id] = {"storage_form": forms[tm_mad]}
                kept.setdefault(tm_mad, []).append(disk_id)
        if datastore is not None and forms.get(_text(datastore, "TM_MAD")) == "network":
            kept.setdefault(_text(datastore, "TM_MAD"), [])
        # network backends describe their disks themselves (volume names, monitors, secrets)
        for tm_mad in sorted(d for d in kept if forms[d] == "network"):
            own_scalars, own_disks = backend_class(tm_mad).facts(vm, datastore, config, kept[tm_mad])
            for name, value in own_scalars.items():
                scalars.setdefault(name, value)
            for disk_id, values in own_disks.items():
                if disk_id in disks:
                    disks[disk_id].update({k: v for k, v in values.items() if k.startswith("storage_")})
    return scalars, disks


def supplier(vm: etree._Element | None, domain: etree._Element | None) -> Supplied:
    """``one_tweaks.facts`` entry point: the facts for ``one-tweaks apply`` (no datastore
    document and no driver configuration there: no ``system_ds.*``, no ``storage.px``)."""
    return storage_facts(vm, None, None)
