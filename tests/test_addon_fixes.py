"""Differences the addon-storpool differential suite found in our tweaks, fixed: values the add-on
accepts that we refused without a safety reason (tests/test_addon_differential.py finds them)."""

from __future__ import annotations

from conftest import apply, deployment, vm_xml


def test_empty_tseg_size_is_zero_as_in_the_addon(assert_valid):  # type: ignore[no-untyped-def]
    # feature_smm.py reads ":unit=MiB" as a size of 0 (extended TSEG off): valid for QEMU and libvirt
    outcome = apply(deployment(), vm_xml({"T_FEATURE_SMM": ":state=on", "T_FEATURE_SMM_TSEG": ":unit=MiB"}))
    tseg = outcome.tree.getroot().find("features/smm/tseg")
    assert tseg is not None and tseg.text == "0" and tseg.get("unit") == "MiB"
    assert_valid(outcome.tree)


def test_smbios_key_colon_value_as_in_the_addon(assert_valid):  # type: ignore[no-untyped-def]
    # sysinfo_smbios.py falls back to key:value when an item has no '='
    outcome = apply(deployment(), vm_xml({"T_SMBIOS_BIOS": "vendor:BVendor;version=1.2"}))
    entries = {e.get("name"): e.text for e in outcome.tree.getroot().iterfind("sysinfo/bios/entry")}
    assert entries == {"vendor": "BVendor", "version": "1.2"}
    assert_valid(outcome.tree)


def test_persistent_cdrom_above_the_cap_is_clamped(assert_valid):  # type: ignore[no-untyped-def]
    # persistent-cdrom.py sets MAX_CDROM_DEVICES drives when asked for more; it never refused
    outcome = apply(deployment(), vm_xml({"T_PERSISTENT_CDROM": "5"}))
    root = outcome.tree.getroot()
    empty = [d for d in root.iterfind("devices/disk[@device='cdrom']") if d.find("source") is None]
    assert [d.find("target").get("dev") for d in empty] == ["hdb", "hdc", "hdd"]  # hda: the context CD-ROM
    assert_valid(outcome.tree)
