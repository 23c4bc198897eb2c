"""Firmware and feature tweaks: os_attrs, os_loader, os_nvram, smm, secure_boot, uuid,
sysinfo, hyperv, hyperv_clock, kvm_hide (rules.d/60..69)."""

from __future__ import annotations

import copy
from pathlib import Path

import conftest
import pytest
from conftest import DOMAIN_RNG, deployment, vm_xml, write_rule, xml_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from tweaks import engine
from tweaks.catalog._firmware import PathList, norm_path, parse_path_list, parse_uuid
from tweaks.catalog.hyperv import parse_spinlocks
from tweaks.catalog.os_loader import parse_loader
from tweaks.catalog.os_nvram import parse_device, parse_nvram
from tweaks.catalog.smm import parse_state, parse_tseg
from tweaks.catalog.sysinfo import parse_oem, section_parser
from tweaks.errors import ParamError
from tweaks.report import APPLIED, ROLLED_BACK, SKIPPED, UNCHANGED
from tweaks.validate import DomainSchema

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SYSTEM = "/var/lib/one//datastores/101/42"
OVMF = "/usr/share/OVMF"
ONE_NS = "http://opennebula.org/xmlns/libvirt/1.0"
COMMON_HOSTILE = ["", " ", "<x/>", "']]><x>", '"', "'", "\u202e", "é", "a" * 600, "$(reboot)", "; rm -rf /",
                  "99999999999999999999", "-1", "0x10", "../../etc/passwd"]

# attribute -> (rule name, values that must apply)
RULES = {
    "T_OS": ("os-attrs", ["firmware=bios", ":firmware=efi", "firmware="]),
    "T_OS_LOADER": ("os-loader", [f"{OVMF}/OVMF_CODE_4M.fd", f"{OVMF}/OVMF_CODE.fd:readonly=yes type=pflash"]),
    "T_OS_NVRAM": ("os-nvram", ["storpool", "file:template=OVMF_VARS.fd", "x_VARS.fd"]),
    "T_FEATURE_SMM": ("smm", ["on", ":state=on", "off"]),
    "T_FEATURE_SMM_TSEG": ("smm", ["48", "1:unit=GiB", "2048:unit=KiB"]),
    "T_OS_SECURE_BOOT": ("secure-boot", ["yes", "no"]),
    "T_UUID": ("uuid", ["6f9619ff-8b86-d011-b42d-00c04fc964ff", "6F9619FF8B86D011B42D00C04FC964FF"]),
    "T_SMBIOS_BIOS": ("sysinfo", ["vendor=ACME;version=1.0", "date=01/31/2024;release=2.7"]),
    "T_SMBIOS_SYSTEM": ("sysinfo", ["manufacturer=ACME;product=Cloud;family=x"]),
    "T_SMBIOS_BASEBOARD": ("sysinfo", ["manufacturer=ACME;asset=A1;location=slot 2"]),
    "T_SMBIOS_CHASSIS": ("sysinfo", ["manufacturer=ACME;sku=S-1"]),
    "T_SMBIOS_OEMSTRINGS": ("sysinfo", ["a;b", "io.systemd.credential:x=y"]),
    "T_HV_SPINLOCKS": ("hyperv", ["on", "on:retries=8191", "retries=4095", "off"]),
    **{f"T_HV_{n}": ("hyperv", ["on", "off", "1", "yes"])
       for n in ("RELAXED", "VAPIC", "RESET", "RUNTIME", "FREQUENCIES", "REENLIGHTENMENT", "CRASH", "TIME",
                 "VPINDEX")},
    **{f"T_HV_{n}": ("hyperv", ["off"]) for n in ("SYNIC", "STIMER", "TLBFLUSH", "IPI", "EVMCS")},
    "T_HV_CLOCK": ("hyperv-clock", ["yes", "no"]),
    "T_KVM_HIDE": ("kvm-hide", ["on", "off", "1"]),
}


_SCHEMA: list[DomainSchema] = []


@pytest.fixture(scope="module")
def _module_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("firmware-cache")


@pytest.fixture(autouse=True)
def _shared_rule_cache(isolated_rules, _module_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """One rule cache for this module (still not the user's): it is keyed by the content of
    every rule file, so sharing it only saves re-checking the same files for every test."""
    monkeypatch.setenv("ONE_TWEAKS_CACHE_DIR", str(_module_cache))


def apply(dom: bytes, vm_data: bytes, rules: list[str] | None = None):  # type: ignore[no-untyped-def]
    """conftest.apply with one compiled libvirt schema for the whole module (fast fuzzing)."""
    if not _SCHEMA:
        _SCHEMA.append(DomainSchema(DOMAIN_RNG))
    return conftest.apply(dom, vm_data, rules, schema=_SCHEMA[0])


# --- builders ------------------------------------------------------------------------------------

def _root(data: bytes | None = None) -> etree._Element:
    return etree.fromstring(data or deployment(), etree.XMLParser(strip_cdata=False))


def domain(*, uefi: bool = True, machine: str = "q35", firmware: str | None = None, hyperv: bool = False,
           secure: bool = False, features: str = "", clock: str | None = None, uuid: str | None = None,
           sysinfo: str | None = None, metadata: bool = True, extra_features: str | None = None) -> bytes:
    """The 6.10 fixture domain, varied: without oned's loader/nvram (uefi=False), another
    machine type, ``<os firmware>``, oned's FEATURES/HYPERV block, a secure loader, more
    ``<features>`` children, a ``<clock>``, ``<uuid>``, ``<sysinfo>``, a second ``<features>``."""
    root = _root()
    os_el = root.find("os")
    os_el.find("type").set("machine", machine)
    if machine != "q35":
        devices = root.findall("devices")[1]
        devices.getparent().remove(devices)
    if not uefi:
        for tag in ("loader", "nvram"):
            os_el.remove(os_el.find(tag))
    elif secure:
        os_el.find("loader").set("secure", "yes")
    if firmware:
        os_el.set("firmware", firmware)
    feats = root.find("features")
    snippets = features
    if hyperv:
        snippets += ("<hyperv><relaxed state='on'/><vapic state='on'/>"
                     "<spinlocks state='on' retries='4096'/></hyperv>")
    if secure:
        snippets += "<smm state='on'/>"
    for child in etree.fromstring(f"<f>{snippets}</f>"):
        feats.append(child)
    if extra_features is not None:
        root.insert(root.index(feats) + 1, etree.fromstring(f"<features>{extra_features}</features>"))
    if clock is not None:
        root.insert(root.index(feats) + 1, etree.fromstring(clock))
    if uuid is not None:
        el = etree.Element("uuid")
        el.text = uuid
        root.insert(1, el)
    if sysinfo is not None:
        root.insert(root.index(os_el), etree.fromstring(sysinfo))
    if not metadata:
        root.remove(root.find("metadata"))
    return etree.tostring(root)


def vm(user: dict[str, str] | None = None, *, native_uefi: bool = False, template: dict[str, str] | None = None,
       drop: tuple[str, ...] = ()) -> bytes:
    """vm-42.xml with USER_TEMPLATE attributes; OS/FIRMWARE and OS/FIRMWARE_SECURE only when
    ``native_uefi`` (so by default no native firmware setting competes with a rule default)."""
    root = etree.fromstring(vm_xml(user, template=template))
    paths = drop if native_uefi else (*drop, "OS/FIRMWARE", "OS/FIRMWARE_SECURE")
    for path in paths:
        el = root.find(f"TEMPLATE/{path}")
        if el is not None:
            el.getparent().remove(el)
    return etree.tostring(root)


def hyperv_vm(user: dict[str, str] | None = None, **kw: str) -> bytes:
    return vm(user, template={"FEATURES/HYPERV": "yes", **kw})


def run(user: dict[str, str] | None = None, dom: bytes | None = None, *, rules: list[str] | None = None,
        vm_data: bytes | None = None):  # type: ignore[no-untyped-def]
    return apply(dom if dom is not None else domain(), vm_data if vm_data is not None else vm(user), rules)


def out_bytes(outcome) -> bytes:  # type: ignore[no-untyped-def]
    return engine.serialize(outcome.tree)


def result(outcome, rule: str):  # type: ignore[no-untyped-def]
    found = [r for r in outcome.report.results if r.name == rule]
    assert len(found) == 1, f"rule {rule} not run"
    return found[0]


def flat(el: etree._Element | None) -> str:
    """An element as compact XML (whitespace-only text dropped, namespaces left out)."""
    assert el is not None
    el = copy.deepcopy(el)
    for node in el.iter():
        if node.text is not None and not node.text.strip():
            node.text = None
        node.tail = None
    return etree.tostring(el, encoding="unicode")


def without(vm_data: bytes, rule: str) -> bytes:
    """``vm_data`` without the USER_TEMPLATE attributes that ``rule`` reads."""
    root = etree.fromstring(vm_data)
    for attribute, (name, _) in RULES.items():
        if name == rule:
            for el in root.findall(f"USER_TEMPLATE/{attribute}"):
                el.getparent().remove(el)
    return etree.tostring(root)


def assert_skipped(outcome, rule: str, attribute: str, dom: bytes, vm_data: bytes | None = None,  # type: ignore[no-untyped-def]
                   rules: list[str] | None = None) -> None:
    """The rule was skipped with a warning naming VM, rule and attribute, and the document
    is what it is when the VM does not set the attribute at all."""
    res = result(outcome, rule)
    assert res.status == SKIPPED, (res.status, res.reason)
    assert any(w.startswith("VM 42: ") and f"rule {rule}:" in w and f"USER_TEMPLATE/{attribute}" in w
               for w in outcome.report.warnings), outcome.report.warnings
    plain = without(vm_data, rule) if vm_data is not None else vm()
    assert out_bytes(outcome) == out_bytes(apply(dom, plain, rules))


def assert_idempotent(outcome, vm_data: bytes) -> None:  # type: ignore[no-untyped-def]
    first = out_bytes(outcome)
    again = apply(first, vm_data)
    assert out_bytes(again) == first
    assert not [r.name for r in again.report.results if r.status == APPLIED]


def extra_rule(tmp_path: Path, name: str, text: str) -> list[str]:
    directory = tmp_path / "rules"
    write_rule(directory, name, "# yaml-language-server: $schema=../tweaks/rules.schema.json\n" + text)
    return [str(directory)]


# --- nothing without attributes --------------------------------------------------------------------

@pytest.mark.parametrize("dom", [domain(), domain(uefi=False), domain(hyperv=True, clock="<clock offset='utc'/>")])
def test_no_attribute_no_change(dom, assert_valid):  # type: ignore[no-untyped-def]
    outcome = run({}, dom)
    assert_valid(outcome.tree)
    for rule in {r for r, _ in RULES.values()}:
        assert result(outcome, rule).status not in (APPLIED, SKIPPED, ROLLED_BACK), rule
    root = outcome.tree.getroot()
    assert root.find("uuid") is None and root.find("sysinfo") is None and root.find("features/smm") is None


# --- os_attrs ------------------------------------------------------------------------------------------

def test_os_firmware_efi_on_a_bios_domain(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(uefi=False)
    data = vm({"T_OS": ":firmware=efi"})
    outcome = run(vm_data=data, dom=dom)
    assert_valid(outcome.tree)
    assert result(outcome, "os-attrs").status == APPLIED
    assert outcome.tree.getroot().find("os").attrib == {"firmware": "efi"}
    assert_idempotent(outcome, data)


def test_os_empty_value_deletes_the_attribute(assert_valid):  # type: ignore[no-untyped-def]
    outcome = run({"T_OS": "firmware="}, domain(uefi=False, firmware="efi"))
    assert_valid(outcome.tree)
    assert outcome.tree.getroot().find("os").attrib == {}


def test_os_firmware_refused_with_a_chosen_loader(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain()  # oned's loader path: libvirt 9.0 refuses firmware= with it
    outcome = run({"T_OS": "firmware=efi"}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "os-attrs", "T_OS", dom)


def test_os_native_firmware_wins_over_a_rule_default(tmp_path, assert_valid):  # type: ignore[no-untyped-def]
    rules = extra_rule(tmp_path, "60-os-attrs.yaml",
                       "name: os-attrs\ntweaks:\n  - os_attrs:\n"
                       "      attrs: {from: user.T_OS, default: firmware=bios}\n")
    dom = domain(uefi=False)
    native = apply(dom, vm(native_uefi=True), rules)
    assert result(native, "os-attrs").status == UNCHANGED
    assert "kept oned's OS/FIRMWARE" in result(native, "os-attrs").reason
    plain = apply(dom, vm(), rules)
    assert_valid(plain.tree)
    assert plain.tree.getroot().find("os").get("firmware") == "bios"
    explicit = apply(dom, vm({"T_OS": "firmware=efi"}, native_uefi=True), rules)
    assert explicit.tree.getroot().find("os").get("firmware") == "efi"


@pytest.mark.parametrize("value", [*COMMON_HOSTILE, "firmware=uefi", "firmware=efi evil=1", "loader=x",
                                   "firmware='efi'", "firmware=efi firmware=bios", "firmware", "type=hvm",
                                   "firmware=<efi/>"])
def test_os_hostile(value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(uefi=False)
    outcome = run({"T_OS": value}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "os-attrs", "T_OS", dom)


# --- os_loader ---------------------------------------------------------------------------------------

def test_loader_replaces_oneds_loader(assert_valid):  # type: ignore[no-untyped-def]
    data = vm({"T_OS_LOADER": f"{OVMF}/OVMF_CODE_4M.fd"}, native_uefi=True)
    outcome = run(vm_data=data)
    assert_valid(outcome.tree)
    assert result(outcome, "os-loader").status == APPLIED
    os_el = outcome.tree.getroot().find("os")
    # oned's secure="no" is kept (T_OS_LOADER did not give secure=)
    assert flat(os_el.find("loader")) == (
        f'<loader readonly="yes" type="pflash" secure="no">{OVMF}/OVMF_CODE_4M.fd</loader>')
    assert len(os_el.findall("loader")) == 1
    assert os_el.find("features/smm") is None
    assert_idempotent(outcome, data)


def test_loader_added_after_type_and_path_normalised(assert_valid):  # type: ignore[no-untyped-def]
    outcome = run({"T_OS_LOADER": "//usr/share//OVMF/OVMF_CODE.fd:readonly=no type=rom"}, domain(uefi=False))
    assert_valid(outcome.tree)
    os_el = outcome.tree.getroot().find("os")
    assert [c.tag for c in os_el] == ["type", "loader"]
    assert flat(os_el.find("loader")) == f'<loader readonly="no" type="rom">{OVMF}/OVMF_CODE.fd</loader>'


def test_secure_loader_turns_smm_on(assert_valid):  # type: ignore[no-untyped-def]
    data = vm({"T_OS_LOADER": f"{OVMF}/OVMF_CODE_4M.secboot.fd:secure=yes"})
    outcome = run(vm_data=data)
    assert_valid(outcome.tree)
    root = outcome.tree.getroot()
    assert flat(root.find("os/loader")) == (
        f'<loader readonly="yes" type="pflash" secure="yes">{OVMF}/OVMF_CODE_4M.secboot.fd</loader>')
    assert flat(root.find("features")) == '<features><acpi/><smm state="on"/></features>'
    assert_idempotent(outcome, data)


def test_secure_loader_refused_off_q35(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(uefi=False, machine="pc")
    outcome = run({"T_OS_LOADER": f"{OVMF}/OVMF_CODE.secboot.fd:secure=yes"}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "os-loader", "T_OS_LOADER", dom)


def test_loader_refused_with_firmware_autoselection(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(uefi=False, firmware="efi")
    outcome = run({"T_OS_LOADER": f"{OVMF}/OVMF_CODE.fd"}, dom)
    assert_skipped(outcome, "os-loader", "T_OS_LOADER", dom)
    both = run({"T_OS_LOADER": f"{OVMF}/OVMF_CODE.fd", "T_OS": "firmware="}, dom)
    assert_valid(both.tree)
    os_el = both.tree.getroot().find("os")
    assert os_el.get("firmware") is None and os_el.findtext("loader") == f"{OVMF}/OVMF_CODE.fd"


@pytest.mark.parametrize("value", [
    *COMMON_HOSTILE,
    f"{OVMF}/../../../etc/shadow", "/etc/passwd", "usr/share/OVMF/OVMF_CODE.fd", "OVMF_CODE.fd",
    "/usr/share/OVMF-evil/OVMF_CODE.fd", f"{OVMF}/./OVMF_CODE.fd", f"{OVMF}/.hidden.fd", f"{OVMF}/a..b.fd",
    OVMF, f"{OVMF}/", f"{OVMF}/OVMF_CODE.fd:evil=1", f"{OVMF}/OVMF_CODE.fd:type=rom secure=yes",
    f"{OVMF}/OVMF_CODE.fd:secure=maybe", f"{OVMF}/a b.fd", f"{OVMF}/é.fd", f"{OVMF}/<x>.fd",
    f"{OVMF}/OVMF_CODE.fd:readonly=yes readonly=no", "/" + "a" * 300, f"{OVMF}\\OVMF_CODE.fd",
    "/usr/share/ovmf/OVMF_CODE.fd", f"{OVMF}/OVMF_CODE.fd\"/><x a=\"",
])
def test_loader_hostile(value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain()
    outcome = run({"T_OS_LOADER": value}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "os-loader", "T_OS_LOADER", dom)


def test_loader_operator_allowlist(tmp_path, assert_valid):  # type: ignore[no-untyped-def]
    rules = extra_rule(tmp_path, "61-os-loader.yaml",
                       "name: os-loader\ntweaks:\n  - os_loader:\n      loader: {from: user.T_OS_LOADER}\n"
                       "      loaders: /opt/fw/CODE.fd /opt/more/\n")
    dom = domain(uefi=False)
    for path in ("/opt/fw/CODE.fd", "/opt/more/sub/X.fd"):
        ok = apply(dom, vm({"T_OS_LOADER": path}), rules)
        assert_valid(ok.tree)
        assert ok.tree.getroot().findtext("os/loader") == path
    for path in ("/opt/fw/OTHER.fd", f"{OVMF}/OVMF_CODE.fd", "/opt/fw/CODE.fd/x", "/opt/more"):
        data = vm({"T_OS_LOADER": path})
        bad = apply(dom, data, rules)
        assert_skipped(bad, "os-loader", "T_OS_LOADER", dom, data, rules)


def test_loader_allowlist_never_from_the_vm(tmp_path):  # type: ignore[no-untyped-def]
    rules = extra_rule(tmp_path, "61-os-loader.yaml",
                       "name: os-loader\ntweaks:\n  - os_loader:\n      loader: {from: user.T_OS_LOADER}\n"
                       "      loaders: {from: user.T_LOADERS, default: /usr/share/OVMF/}\n")
    dom = domain(uefi=False)
    data = vm({"T_OS_LOADER": "/etc/evil.fd", "T_LOADERS": "/etc/"})
    outcome = apply(dom, data, rules)
    res = result(outcome, "os-loader")
    assert res.status == SKIPPED and "operator setting" in res.reason
    assert outcome.tree.getroot().find("os/loader") is None


ADDON_OVMF = "/var/tmp/one/OVMF"


@pytest.mark.parametrize("shipped", [True, False])
def test_loader_in_the_addons_ovmf_directory(shipped, tmp_path, assert_valid):  # type: ignore[no-untyped-def]
    """addon-storpool documents T_OS_LOADER=/var/tmp/one/OVMF/OVMF_CODE.fd (it ships OVMF in
    the remotes): the shipped rule and the tweak's own default allowlist both accept it, so
    a UEFI VM keeps its firmware and T_OS_NVRAM (which needs a loader) is not skipped."""
    rules = None if shipped else extra_rule(
        tmp_path, "61-os-loader.yaml",
        "name: os-loader\ntweaks:\n  - os_loader:\n      loader: {from: user.T_OS_LOADER}\n")
    data = vm({"T_OS_LOADER": f"{ADDON_OVMF}/OVMF_CODE.fd",
               "T_OS_NVRAM": f"storpool:template={ADDON_OVMF}/OVMF_VARS.fd"})
    outcome = apply(domain(uefi=False), data, rules)
    assert_valid(outcome.tree)
    assert not outcome.report.warnings
    assert result(outcome, "os-loader").status == APPLIED
    assert result(outcome, "os-nvram").status == APPLIED
    os_el = outcome.tree.getroot().find("os")
    assert flat(os_el.find("loader")) == f'<loader readonly="yes" type="pflash">{ADDON_OVMF}/OVMF_CODE.fd</loader>'
    assert flat(os_el.find("nvram")) == '<nvram type="block"><source dev="/dev/storpool/one-sys-42-NVRAM"/></nvram>'
    assert_idempotent(outcome, data)


def test_loader_native_wins_over_rule_default(tmp_path):  # type: ignore[no-untyped-def]
    rules = extra_rule(tmp_path, "61-os-loader.yaml",
                       "name: os-loader\ntweaks:\n  - os_loader:\n"
                       f"      loader: {{from: user.T_OS_LOADER, default: {OVMF}/OVMF_CODE_4M.fd}}\n")
    outcome = apply(domain(), vm(native_uefi=True), rules)
    assert result(outcome, "os-loader").status == UNCHANGED
    assert outcome.tree.getroot().findtext("os/loader") == f"{OVMF}/OVMF_CODE.fd"


@pytest.mark.parametrize("text", ["relative/", "/", "/a/../b/", "", "/x y/"])
def test_bad_allowlist_literal_is_a_rule_error(text):  # type: ignore[no-untyped-def]
    with pytest.raises(ParamError):
        parse_path_list(text)


def test_path_helpers():  # type: ignore[no-untyped-def]
    allowed = parse_path_list(f"{OVMF}/ /opt/one.fd //srv//fw/")
    assert str(allowed) == f"{OVMF}/ /opt/one.fd /srv/fw/"
    assert allowed == PathList((f"{OVMF}/", "/opt/one.fd", "/srv/fw/"))
    assert allowed.allows(f"{OVMF}/OVMF_CODE.fd") and allowed.allows("/srv/fw/a/b.fd")
    assert not allowed.allows(OVMF) and not allowed.allows("/opt/one.fd2") and not allowed.allows("/srv/fwx/a")
    assert norm_path("//a///b") == "/a/b"
    assert parse_loader(f"{OVMF}/X.fd").attrs == {"readonly": "yes", "type": "pflash"}
    assert parse_loader(f"{OVMF}/X.fd:type=rom").attrs == {"type": "rom"}
    assert parse_loader(f"{OVMF}/X.fd:secure=on stateless=no").attrs == {
        "readonly": "yes", "type": "pflash", "secure": "yes", "stateless": "no"}


# --- os_nvram -----------------------------------------------------------------------------------------

def test_nvram_storpool_block_volume(assert_valid):  # type: ignore[no-untyped-def]
    data = vm({"T_OS_NVRAM": "storpool:template=OVMF_VARS.fd"}, native_uefi=True)
    outcome = run(vm_data=data)
    assert_valid(outcome.tree)
    assert result(outcome, "os-nvram").status == APPLIED
    os_el = outcome.tree.getroot().find("os")
    assert flat(os_el.find("nvram")) == '<nvram type="block"><source dev="/dev/storpool/one-sys-42-NVRAM"/></nvram>'
    assert [c.tag for c in os_el] == ["type", "loader", "nvram"]
    assert_idempotent(outcome, data)


def test_nvram_storpool_legacy_file_form_is_refused(assert_valid):  # type: ignore[no-untyped-def]
    # libvirt 9.0 opens <nvram>/dev/...</nvram> with qemu's file driver, which refuses devices
    outcome = apply(deployment(), vm_xml({"T_OS_NVRAM": "storpool:type=file"}))
    assert_valid(outcome.tree)
    result = next(r for r in outcome.report.results if r.name == "os-nvram")
    assert result.status == "skipped" and "type=file cannot hold the storpool volume" in result.reason
    assert outcome.tree.getroot().findtext("os/nvram") == "/var/lib/one//datastores/101/42/web-42_VARS.fd"


def test_nvram_files_in_the_system_datastore(assert_valid):  # type: ignore[no-untyped-def]
    cases = {
        "file": f"<nvram>{SYSTEM}/web-42_VARS.fd</nvram>",
        "file:template=OVMF_VARS.fd": f'<nvram template="{OVMF}/OVMF_VARS.fd">{SYSTEM}/web-42_VARS.fd</nvram>',
        f"my_VARS.fd:template={OVMF}/OVMF_VARS.ms.fd type=file":
            f'<nvram template="{OVMF}/OVMF_VARS.ms.fd">{SYSTEM}/my_VARS.fd</nvram>',
        "/var/lib/one/datastores/101/42/x.fd": f"<nvram>{SYSTEM}/x.fd</nvram>",
    }
    for value, expected in cases.items():
        data = vm({"T_OS_NVRAM": value})
        outcome = run(vm_data=data)
        assert_valid(outcome.tree)
        assert flat(outcome.tree.getroot().find("os/nvram")) == expected, value
        assert_idempotent(outcome, data)


def test_nvram_file_keyword_keeps_oneds_file(assert_valid):  # type: ignore[no-untyped-def]
    outcome = run({"T_OS_NVRAM": "file"})
    assert result(outcome, "os-nvram").status == UNCHANGED


def test_nvram_operator_device_template(tmp_path, assert_valid):  # type: ignore[no-untyped-def]
    rules = extra_rule(tmp_path, "62-os-nvram.yaml",
                       "name: os-nvram\ntweaks:\n  - os_nvram:\n      nvram: {from: user.T_OS_NVRAM}\n"
                       "      device: /dev/mydrv/{px}-{vm_id}-nvram\n      px: cloud1\n")
    outcome = apply(domain(), vm({"T_OS_NVRAM": "storpool"}), rules)
    assert_valid(outcome.tree)
    assert outcome.tree.getroot().find("os/nvram/source").get("dev") == "/dev/mydrv/cloud1-42-nvram"


def test_nvram_needs_a_uefi_loader(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(uefi=False)
    outcome = run({"T_OS_NVRAM": "storpool"}, dom)
    assert_skipped(outcome, "os-nvram", "T_OS_NVRAM", dom)
    auto = run({"T_OS_NVRAM": "storpool"}, domain(uefi=False, firmware="efi"))
    assert_valid(auto.tree)
    assert result(auto, "os-nvram").status == APPLIED


def test_nvram_file_keyword_needs_a_plain_vm_name():  # type: ignore[no-untyped-def]
    root = _root()
    root.find(f"metadata/{{{ONE_NS}}}vm/{{{ONE_NS}}}name").text = "../my vm"
    dom = etree.tostring(root)
    outcome = run({"T_OS_NVRAM": "file"}, dom)
    assert_skipped(outcome, "os-nvram", "T_OS_NVRAM", dom)


def test_nvram_operator_settings_never_from_the_vm(tmp_path):  # type: ignore[no-untyped-def]
    rules = extra_rule(tmp_path, "62-os-nvram.yaml",
                       "name: os-nvram\ntweaks:\n  - os_nvram:\n      nvram: {from: user.T_OS_NVRAM}\n"
                       "      px: {from: user.T_PX, default: one}\n")
    outcome = apply(domain(), vm({"T_OS_NVRAM": "storpool", "T_PX": "other"}), rules)
    res = result(outcome, "os-nvram")
    assert res.status == SKIPPED and "operator setting" in res.reason
    assert outcome.tree.getroot().find("os/nvram/source") is None


def test_nvram_file_needs_the_system_datastore_metadata():  # type: ignore[no-untyped-def]
    dom = domain(metadata=False)
    outcome = run({"T_OS_NVRAM": "x.fd"}, dom)
    assert_skipped(outcome, "os-nvram", "T_OS_NVRAM", dom)


@pytest.mark.parametrize("value", [
    # "99999999999999999999" and "0x10" are plain file names: fine as NVRAM files
    *(v for v in COMMON_HOSTILE if v not in ("99999999999999999999", "0x10")),
    "/var/lib/one/datastores/101/43/x.fd", "/var/lib/one/datastores/101/42/../43/x.fd",
    "/var/lib/one/datastores/101/42/sub/x.fd", "/var/lib/one/datastores/101/42", "../x.fd", "./x.fd", ".x.fd",
    "x.fd:template=/etc/shadow", "x.fd:template=../../etc/shadow", "x.fd:template=../OVMF_VARS.fd",
    "x.fd:type=block", "storpool:type=disk", ":template=/usr/share/OVMF/OVMF_VARS.fd",
    "x.fd:template=OVMF_VARS.fd evil=1", "<nvram/>", "é.fd", "x.fd:template=/usr/share/OVMF-x/VARS.fd",
    "storpool:template=/etc/passwd", "x.fd:template=", "x y.fd", "/dev/storpool/one-sys-43-NVRAM",
])
def test_nvram_hostile(value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain()
    outcome = run({"T_OS_NVRAM": value}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "os-nvram", "T_OS_NVRAM", dom)


@pytest.mark.parametrize("text", ["/dev/x/{px}", "/dev/{evil}{vm_id}", "/dev/{vm_id!r}", "/dev/{vm_id:>9}",
                                  "/tmp/{vm_id}", "dev/{vm_id}", "/dev/../{vm_id}", "/dev/{vm_id", "/dev/a b{vm_id}"])
def test_bad_device_template(text):  # type: ignore[no-untyped-def]
    with pytest.raises(ParamError):
        parse_device(text)


def test_nvram_parser():  # type: ignore[no-untyped-def]
    spec = parse_nvram("storpool:template=OVMF_VARS.fd")
    assert (spec.where, spec.kind, spec.template) == ("storpool", "block", "OVMF_VARS.fd")
    spec = parse_nvram("//var//x.fd:template=//usr/share/OVMF/V.fd")
    assert (spec.where, spec.kind, spec.template) == ("/var/x.fd", "file", "/usr/share/OVMF/V.fd")


# --- smm ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("user", "expected"), [
    ({"T_FEATURE_SMM": "on"}, '<smm state="on"/>'),
    ({"T_FEATURE_SMM": ":state=on"}, '<smm state="on"/>'),
    ({"T_FEATURE_SMM": "OFF"}, '<smm state="off"/>'),
    ({"T_FEATURE_SMM": "on", "T_FEATURE_SMM_TSEG": "48"}, '<smm state="on"><tseg unit="MiB">48</tseg></smm>'),
    ({"T_FEATURE_SMM_TSEG": "48:unit=MiB"}, '<smm state="on"><tseg unit="MiB">48</tseg></smm>'),
    ({"T_FEATURE_SMM_TSEG": "1:unit=gib"}, '<smm state="on"><tseg unit="GiB">1</tseg></smm>'),
    ({"T_FEATURE_SMM_TSEG": "0"}, '<smm state="on"><tseg unit="MiB">0</tseg></smm>'),
])
def test_smm(user, expected, assert_valid):  # type: ignore[no-untyped-def]
    data = vm(user)
    outcome = run(vm_data=data)
    assert_valid(outcome.tree)
    assert result(outcome, "smm").status == APPLIED
    assert flat(outcome.tree.getroot().find("features")) == f"<features><acpi/>{expected}</features>"
    assert_idempotent(outcome, data)


def test_smm_uses_the_merged_features(assert_valid):  # type: ignore[no-untyped-def]
    outcome = run({"T_FEATURE_SMM": "on"}, domain(extra_features="<pae/>"))
    assert_valid(outcome.tree)
    root = outcome.tree.getroot()
    assert len(root.findall("features")) == 1
    assert flat(root.find("features")) == '<features><acpi/><pae/><smm state="on"/></features>'


def test_smm_off_drops_the_tseg(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(features="<smm state='on'><tseg unit='MiB'>48</tseg></smm>")
    outcome = run({"T_FEATURE_SMM": "off"}, dom)
    assert_valid(outcome.tree)
    assert flat(outcome.tree.getroot().find("features/smm")) == '<smm state="off"/>'


def test_smm_tseg_replaced(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(features="<smm state='on'><tseg unit='KiB'>16384</tseg></smm>")
    outcome = run({"T_FEATURE_SMM_TSEG": "64"}, dom)
    assert_valid(outcome.tree)
    assert flat(outcome.tree.getroot().find("features/smm")) == '<smm state="on"><tseg unit="MiB">64</tseg></smm>'


@pytest.mark.parametrize(("user", "attribute", "dom"), [
    ({"T_FEATURE_SMM": "off", "T_FEATURE_SMM_TSEG": "48"}, "T_FEATURE_SMM_TSEG", None),
    ({"T_FEATURE_SMM": "off"}, "T_FEATURE_SMM", "secure"),
    ({"T_FEATURE_SMM_TSEG": "48"}, "T_FEATURE_SMM_TSEG", "pc"),
    ({"T_FEATURE_SMM_TSEG": "48"}, "T_FEATURE_SMM_TSEG", "smm-off"),
])
def test_smm_conflicts(user, attribute, dom, assert_valid):  # type: ignore[no-untyped-def]
    data = {None: domain(), "secure": domain(secure=True), "pc": domain(uefi=False, machine="pc"),
            "smm-off": domain(features="<smm state='off'/>")}[dom]
    outcome = run(user, data)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "smm", attribute, data)


def test_smm_on_a_pc_machine(assert_valid):  # type: ignore[no-untyped-def]
    outcome = run({"T_FEATURE_SMM": "on"}, domain(uefi=False, machine="pc"))
    assert_valid(outcome.tree)
    assert outcome.tree.getroot().find("features/smm").get("state") == "on"


@pytest.mark.parametrize("value", [*COMMON_HOSTILE, "maybe", "on:state=off", "on:foo=bar", "<smm/>", ":", ":state=",
                                   "on off", ":state=on state=on"])
def test_smm_state_hostile(value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain()
    outcome = run({"T_FEATURE_SMM": value}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "smm", "T_FEATURE_SMM", dom)


@pytest.mark.parametrize("value", [*COMMON_HOSTILE, "65536", "1.5", "48:unit=MB", "1023:unit=KiB",
                                   "48:unit=MiB evil=1", "64:unit=GiB", "48MiB", "48:unit=", "48:size=1", "4 8"])
def test_smm_tseg_hostile(value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain()
    outcome = run({"T_FEATURE_SMM_TSEG": value}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "smm", "T_FEATURE_SMM_TSEG", dom)


def test_smm_parsers():  # type: ignore[no-untyped-def]
    assert parse_state("on") is True and parse_state(":state=off") is False and parse_state("yes:state=on") is True
    assert parse_tseg("65535") == (65535, "MiB") and parse_tseg("1024:unit=k") == (1024, "KiB")


# --- secure_boot ------------------------------------------------------------------------------------------

def test_secure_boot_on_oneds_loader(assert_valid):  # type: ignore[no-untyped-def]
    data = vm({"T_OS_SECURE_BOOT": "yes"}, native_uefi=True)
    outcome = run(vm_data=data)
    assert_valid(outcome.tree)
    assert result(outcome, "secure-boot").status == APPLIED
    root = outcome.tree.getroot()
    assert flat(root.find("os/loader")) == (
        f'<loader readonly="yes" type="pflash" secure="yes">{OVMF}/OVMF_CODE.fd</loader>')
    assert flat(root.find("features")) == '<features><acpi/><smm state="on"/></features>'
    assert_idempotent(outcome, data)


def test_secure_boot_off(assert_valid):  # type: ignore[no-untyped-def]
    outcome = run({"T_OS_SECURE_BOOT": "no"}, domain(secure=True))
    assert_valid(outcome.tree)
    root = outcome.tree.getroot()
    assert root.find("os/loader").get("secure") == "no"
    assert root.find("features/smm").get("state") == "on"


def test_secure_boot_with_firmware_autoselection(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(uefi=False, firmware="efi")
    on = run({"T_OS_SECURE_BOOT": "yes"}, dom)
    assert_valid(on.tree)
    root = on.tree.getroot()
    assert flat(root.find("os/firmware")) == '<firmware><feature enabled="yes" name="secure-boot"/></firmware>'
    assert root.find("os/loader") is None
    assert root.find("features/smm").get("state") == "on"
    off = run({"T_OS_SECURE_BOOT": "no"}, dom)
    assert_valid(off.tree)
    assert flat(off.tree.getroot().find("os/firmware")) == (
        '<firmware><feature enabled="no" name="enrolled-keys"/><feature enabled="no" name="secure-boot"/></firmware>')
    assert off.tree.getroot().find("features/smm") is None


def test_secure_boot_on_pathless_loader_with_autoselection(assert_valid):  # type: ignore[no-untyped-def]
    root = _root(domain(uefi=False, firmware="efi"))
    etree.SubElement(root.find("os"), "loader", secure="no")
    outcome = run({"T_OS_SECURE_BOOT": "yes"}, etree.tostring(root))
    assert_valid(outcome.tree)
    assert flat(outcome.tree.getroot().find("os/loader")) == '<loader secure="yes"/>'


@pytest.mark.parametrize("dom", ["bios", "pc", "rom"])
def test_secure_boot_impossible(dom, assert_valid):  # type: ignore[no-untyped-def]
    data = {"bios": domain(uefi=False), "pc": domain(machine="pc")}.get(dom)
    if data is None:
        root = _root()
        root.find("os/loader").set("type", "rom")
        data = etree.tostring(root)
    outcome = run({"T_OS_SECURE_BOOT": "yes"}, data)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "secure-boot", "T_OS_SECURE_BOOT", data)


def test_secure_boot_refused_when_the_vm_turns_smm_off(assert_valid):  # type: ignore[no-untyped-def]
    outcome = run({"T_OS_SECURE_BOOT": "yes", "T_FEATURE_SMM": "off"})
    assert_valid(outcome.tree)
    assert result(outcome, "smm").status == APPLIED
    assert result(outcome, "secure-boot").status == SKIPPED
    root = outcome.tree.getroot()
    assert root.find("os/loader").get("secure") == "no" and root.find("features/smm").get("state") == "off"


@pytest.mark.parametrize("value", [*COMMON_HOSTILE, "maybe", "2", "<yes/>", "yes;no"])
def test_secure_boot_hostile(value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain()
    outcome = run({"T_OS_SECURE_BOOT": value}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "secure-boot", "T_OS_SECURE_BOOT", dom)


# --- uuid ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["6F9619FF-8B86-D011-B42D-00C04FC964FF", "6f9619ff8b86d011b42d00c04fc964ff"])
def test_uuid(value, assert_valid):  # type: ignore[no-untyped-def]
    data = vm({"T_UUID": value})
    outcome = run(vm_data=data)
    assert_valid(outcome.tree)
    root = outcome.tree.getroot()
    assert [root[0].tag, root[1].tag] == ["name", "uuid"]
    assert root.findtext("uuid") == "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    assert len(root.findall("uuid")) == 1
    assert_idempotent(outcome, data)


def test_uuid_replaced_and_same_uuid_left_alone(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(uuid="6f9619ff-8b86-d011-b42d-00c04fc964ff")
    outcome = run({"T_UUID": "11111111-2222-3333-4444-555555555555"}, dom)
    assert_valid(outcome.tree)
    assert outcome.tree.getroot().findtext("uuid") == "11111111-2222-3333-4444-555555555555"
    same = run({"T_UUID": "6F9619FF8B86D011B42D00C04FC964FF"}, domain(uuid="6f9619ff-8b86-d011-b42d-00c04fc964ff"))
    assert result(same, "uuid").status == UNCHANGED


@pytest.mark.parametrize("value", [*COMMON_HOSTILE, "not-a-uuid", "00000000-0000-0000-0000-000000000000",
                                   "ffffffffffffffffffffffffffffffff", "{6f9619ff-8b86-d011-b42d-00c04fc964ff}",
                                   "6f9619ff-8b86-d011-b42d-00c04fc964ff0", "6f9619ff-8b86-d011-b42d-00c04fc964fg",
                                   "6f9619ff8b86-d011-b42d-00c04fc964ff", "6f9619ff-8b86-d011-b42d-00c04fc964f"])
def test_uuid_hostile(value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain()
    outcome = run({"T_UUID": value}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "uuid", "T_UUID", dom)


def test_uuid_and_smbios_uuid_must_agree(assert_valid):  # type: ignore[no-untyped-def]
    good = run({"T_UUID": "6f9619ff-8b86-d011-b42d-00c04fc964ff",
                "T_SMBIOS_SYSTEM": "uuid=6F9619FF8B86D011B42D00C04FC964FF"})
    assert_valid(good.tree)
    assert result(good, "sysinfo").status == APPLIED
    assert good.tree.getroot().findtext("sysinfo/system/entry") == "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    bad = run({"T_UUID": "11111111-2222-3333-4444-555555555555",
               "T_SMBIOS_SYSTEM": "uuid=6f9619ff-8b86-d011-b42d-00c04fc964ff"})
    assert_valid(bad.tree)
    assert result(bad, "uuid").status == APPLIED
    assert result(bad, "sysinfo").status == SKIPPED
    assert bad.tree.getroot().find("sysinfo") is None
    dom = domain(sysinfo="<sysinfo type='smbios'><system><entry name='uuid'>6f9619ff-8b86-d011-b42d-00c04fc964ff"
                         "</entry></system></sysinfo>")
    clash = run({"T_UUID": "11111111-2222-3333-4444-555555555555"}, dom)
    assert_skipped(clash, "uuid", "T_UUID", dom)


def test_uuid_parser():  # type: ignore[no-untyped-def]
    assert parse_uuid("6F9619FF8B86D011B42D00C04FC964FF") == "6f9619ff-8b86-d011-b42d-00c04fc964ff"


# --- sysinfo -------------------------------------------------------------------------------------------------

def test_sysinfo_all_sections(assert_valid):  # type: ignore[no-untyped-def]
    data = vm({
        "T_SMBIOS_BIOS": "release=2.7;vendor=ACME & Co <lab>;date=01/31/2024",
        "T_SMBIOS_SYSTEM": "Manufacturer=ACME;product=\"Cloud\" 'VM';serial=S-42",
        "T_SMBIOS_BASEBOARD": "manufacturer=ACME;location=slot 2",
        "T_SMBIOS_CHASSIS": "sku=C-1;asset=A 1",
        "T_SMBIOS_OEMSTRINGS": "io.systemd.credential:a=b; second ;;",
    })
    outcome = run(vm_data=data)
    assert_valid(outcome.tree)
    assert result(outcome, "sysinfo").status == APPLIED
    root = outcome.tree.getroot()
    assert flat(root.find("os/smbios")) == '<smbios mode="sysinfo"/>'
    assert root.index(root.find("sysinfo")) == root.index(root.find("os")) - 1
    assert flat(root.find("sysinfo")) == (
        '<sysinfo type="smbios">'
        '<bios><entry name="vendor">ACME &amp; Co &lt;lab&gt;</entry><entry name="date">01/31/2024</entry>'
        '<entry name="release">2.7</entry></bios>'
        '<system><entry name="manufacturer">ACME</entry><entry name="product">"Cloud" \'VM\'</entry>'
        '<entry name="serial">S-42</entry></system>'
        '<baseBoard><entry name="manufacturer">ACME</entry><entry name="location">slot 2</entry></baseBoard>'
        '<chassis><entry name="asset">A 1</entry><entry name="sku">C-1</entry></chassis>'
        '<oemStrings><entry>io.systemd.credential:a=b</entry><entry>second</entry></oemStrings>'
        '</sysinfo>')
    assert_idempotent(outcome, data)


def test_sysinfo_merges_into_an_existing_one(assert_valid):  # type: ignore[no-untyped-def]
    root = _root(domain(sysinfo="<sysinfo type='smbios'><bios><entry name='vendor'>Old</entry>"
                                "<entry name='version'>1</entry></bios><oemStrings><entry>a</entry></oemStrings>"
                                "</sysinfo>"))
    etree.SubElement(root.find("os"), "smbios", mode="host")
    data = vm({"T_SMBIOS_BIOS": "vendor=New", "T_SMBIOS_OEMSTRINGS": "a;b"})
    outcome = run(vm_data=data, dom=etree.tostring(root))
    assert_valid(outcome.tree)
    out = outcome.tree.getroot()
    assert len(out.findall("sysinfo")) == 1 and len(out.findall("os/smbios")) == 1
    assert out.find("os/smbios").get("mode") == "sysinfo"
    assert flat(out.find("sysinfo")) == (
        '<sysinfo type="smbios"><bios><entry name="vendor">New</entry><entry name="version">1</entry></bios>'
        '<oemStrings><entry>a</entry><entry>b</entry></oemStrings></sysinfo>')
    assert_idempotent(outcome, data)


@pytest.mark.parametrize(("attribute", "value"), [
    *(("T_SMBIOS_BIOS", v) for v in [*COMMON_HOSTILE, "vendor", "evil=1", "vendor=", "vendor=é", "vendor=" + "x" * 65,
                                     "date=2024-01-02", "date=13/01/2024", "release=1.256", "release=x",
                                     "vendor=a;vendor=b", "vendor=a\tb", "uuid=6f9619ff-8b86-d011-b42d-00c04fc964ff",
                                     "vendor=<x/>;<y>=1"]),
    *(("T_SMBIOS_SYSTEM", v) for v in ["uuid=zzz", "asset=1", "product=\u202e", ";;"]),
    *(("T_SMBIOS_BASEBOARD", v) for v in ["sku=1", "manufacturer=a\u00a0b"]),
    *(("T_SMBIOS_CHASSIS", v) for v in ["product=x", "manufacturer=" + "y" * 100]),
    *(("T_SMBIOS_OEMSTRINGS", v) for v in ["", ";;", "é", "a;" + "b" * 256, ";".join(str(i) for i in range(33))]),
])
def test_sysinfo_hostile(attribute, value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain()
    outcome = run({attribute: value}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "sysinfo", attribute, dom)


def test_sysinfo_parsers():  # type: ignore[no-untyped-def]
    assert section_parser("chassis")("sku=1;manufacturer=m") == {"manufacturer": "m", "sku": "1"}
    assert parse_oem("a;a;b") == ("a", "b")


# --- hyperv ----------------------------------------------------------------------------------------------------

HV_BASE = ('<hyperv><relaxed state="on"/><vapic state="on"/><spinlocks state="on" retries="4096"/>'
           "{}</hyperv>")


def test_hyperv_adds_in_libvirt_order_without_duplicates(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(hyperv=True)
    data = hyperv_vm({"T_HV_RELAXED": "on", "T_HV_IPI": "on", "T_HV_SYNIC": "1", "T_HV_VPINDEX": "yes",
                      "T_HV_FREQUENCIES": "on"})
    outcome = run(vm_data=data, dom=dom)
    assert_valid(outcome.tree)
    assert result(outcome, "hyperv").status == APPLIED
    assert flat(outcome.tree.getroot().find("features/hyperv")) == HV_BASE.format(
        '<vpindex state="on"/><synic state="on"/><frequencies state="on"/><ipi state="on"/>')
    assert_idempotent(outcome, data)


@pytest.mark.parametrize(("value", "expected"), [
    ("on:retries=8191", '<spinlocks state="on" retries="8191"/>'),
    ("retries=4095", '<spinlocks state="on" retries="4095"/>'),
    ("on", '<spinlocks state="on" retries="4096"/>'),
    ("off", '<spinlocks state="off"/>'),
])
def test_hyperv_spinlocks(value, expected, assert_valid):  # type: ignore[no-untyped-def]
    outcome = run(vm_data=hyperv_vm({"T_HV_SPINLOCKS": value}), dom=domain(hyperv=True))
    assert_valid(outcome.tree)
    assert flat(outcome.tree.getroot().find("features/hyperv/spinlocks")) == expected


def test_hyperv_spinlocks_keeps_a_valid_count(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(features="<hyperv><spinlocks state='off' retries='8191'/></hyperv>")
    outcome = run(vm_data=hyperv_vm({"T_HV_SPINLOCKS": "on"}), dom=dom)
    assert_valid(outcome.tree)
    assert flat(outcome.tree.getroot().find("features/hyperv")) == (
        '<hyperv><spinlocks state="on" retries="8191"/></hyperv>')


def test_hyperv_time_is_the_hypervclock_and_crash_a_panic_device(assert_valid):  # type: ignore[no-untyped-def]
    data = hyperv_vm({"T_HV_TIME": "on", "T_HV_CRASH": "on", "T_HV_STIMER": "on", "T_HV_SYNIC": "on",
                      "T_HV_VPINDEX": "on"})
    outcome = run(vm_data=data, dom=domain(hyperv=True))
    assert_valid(outcome.tree)
    root = outcome.tree.getroot()
    assert flat(root.find("clock")) == '<clock offset="utc"><timer name="hypervclock" present="yes"/></clock>'
    assert [flat(p) for p in root.iterfind("devices/panic")] == ['<panic model="hyperv"/>']
    assert root.find("features/hyperv/time") is None and root.find("features/hyperv/crash") is None
    assert flat(root.find("features/hyperv")) == HV_BASE.format(
        '<vpindex state="on"/><synic state="on"/><stimer state="on"/>')
    assert_idempotent(outcome, data)
    off = run(vm_data=hyperv_vm({"T_HV_CRASH": "off"}), dom=out_bytes(outcome))
    assert_valid(off.tree)
    assert off.tree.getroot().find("devices/panic") is None


HYPERVCLOCK = '<clock offset="utc"><timer name="hypervclock" present="yes"/></clock>'


@pytest.mark.parametrize(("user", "added", "hyperv", "notes"), [
    ({"T_HV_SYNIC": "on"}, "vpindex", '<vpindex state="on"/><synic state="on"/><frequencies state="on"/>',
     ["hv-vpindex on: QEMU needs it for hv-synic"]),
    ({"T_HV_STIMER": "on"}, "synic, vpindex, time",
     '<vpindex state="on"/><synic state="on"/><stimer state="on"/><frequencies state="on"/>',
     ["hv-synic on: QEMU needs it for hv-stimer", "hv-time on: QEMU needs it for hv-stimer",
      "hv-vpindex on: QEMU needs it for hv-synic"]),
    ({"T_HV_TLBFLUSH": "on"}, "vpindex", '<vpindex state="on"/><frequencies state="on"/><tlbflush state="on"/>',
     ["hv-vpindex on: QEMU needs it for hv-tlbflush"]),
    ({"T_HV_IPI": "1"}, "vpindex", '<vpindex state="on"/><frequencies state="on"/><ipi state="on"/>',
     ["hv-vpindex on: QEMU needs it for hv-ipi"]),
    ({"T_HV_STIMER": "on", "T_HV_SYNIC": "on", "T_HV_VPINDEX": "on"}, "time",
     '<vpindex state="on"/><synic state="on"/><stimer state="on"/><frequencies state="on"/>',
     ["hv-time on: QEMU needs it for hv-stimer"]),
])
def test_hyperv_adds_what_qemu_needs(user, added, hyperv, notes, assert_valid):  # type: ignore[no-untyped-def]
    """An enlightenment without its dependencies gets them (QEMU refuses to start
    otherwise), the VM's other T_HV_* stay, and --explain says what was added."""
    data = hyperv_vm({**user, "T_HV_FREQUENCIES": "on"})
    outcome = run(vm_data=data, dom=domain(hyperv=True))
    assert_valid(outcome.tree)
    res = result(outcome, "hyperv")
    assert res.status == APPLIED, (res.status, res.reason)
    root = outcome.tree.getroot()
    got = flat(root.find("features/hyperv"))
    assert got == HV_BASE.format(hyperv)
    if "time" in added:
        assert flat(root.find("clock")) == HYPERVCLOCK
    for note in notes:
        assert f"turned {note}" in res.reason, res.reason
    assert not outcome.report.warnings
    assert_idempotent(outcome, data)


def test_hyperv_evmcs_turns_vapic_on(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(features="<hyperv><relaxed state='on'/></hyperv>")
    outcome = run(vm_data=hyperv_vm({"T_HV_EVMCS": "on"}), dom=dom)
    assert_valid(outcome.tree)
    assert flat(outcome.tree.getroot().find("features/hyperv")) == (
        '<hyperv><relaxed state="on"/><vapic state="on"/><evmcs state="on"/></hyperv>')
    assert "turned hv-vapic on: QEMU needs it for hv-evmcs" in result(outcome, "hyperv").reason


@pytest.mark.parametrize(("user", "attribute"), [
    ({"T_HV_VAPIC": "off", "T_HV_EVMCS": "on"}, "T_HV_EVMCS"),
    ({"T_HV_SYNIC": "on", "T_HV_VPINDEX": "off"}, "T_HV_SYNIC"),
    ({"T_HV_STIMER": "on", "T_HV_TIME": "no"}, "T_HV_STIMER"),
])
def test_hyperv_dependency_turned_off_by_the_vm(user, attribute, assert_valid):  # type: ignore[no-untyped-def]
    """Only a contradiction the VM itself asks for skips the rule (as written in the warning)."""
    dom = domain(hyperv=True)
    data = hyperv_vm(user)
    outcome = run(vm_data=data, dom=dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "hyperv", attribute, dom, data)
    assert any(f"{attribute}='{user[attribute]}'" in w for w in outcome.report.warnings), outcome.report.warnings


def test_hyperv_turning_off_a_needed_feature(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(features="<hyperv><vpindex state='on'/><synic state='on'/></hyperv>")
    data = hyperv_vm({"T_HV_VPINDEX": "off"})
    outcome = run(vm_data=data, dom=dom)
    assert_skipped(outcome, "hyperv", "T_HV_VPINDEX", dom, data)


def test_hyperv_needs_oneds_hyperv_unless_create(tmp_path, assert_valid):  # type: ignore[no-untyped-def]
    outcome = run({"T_HV_RELAXED": "on"})
    res = result(outcome, "hyperv")
    assert res.status == UNCHANGED and "no <features><hyperv>" in res.reason
    assert outcome.tree.getroot().find("features/hyperv") is None
    rules = extra_rule(tmp_path, "67-hyperv.yaml",
                       "name: hyperv\ntweaks:\n  - hyperv:\n      relaxed: {from: user.T_HV_RELAXED}\n"
                       "      create: true\n")
    created = apply(domain(), vm({"T_HV_RELAXED": "on"}), rules)
    assert_valid(created.tree)
    assert flat(created.tree.getroot().find("features")) == (
        '<features><acpi/><hyperv><relaxed state="on"/></hyperv></features>')


def test_hyperv_passthrough_left_alone():  # type: ignore[no-untyped-def]
    outcome = run(vm_data=hyperv_vm({"T_HV_RELAXED": "on"}), dom=domain(features="<hyperv mode='passthrough'/>"))
    assert result(outcome, "hyperv").status == UNCHANGED


@pytest.mark.parametrize("value", [*COMMON_HOSTILE, "maybe", "2", "<on/>", "on:retries=100", "retries=4294967296",
                                   "on:retries=-1", "on:retries=0x1000", "off:retries=5000", "on:foo=1"])
def test_hyperv_spinlocks_hostile(value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(hyperv=True)
    data = hyperv_vm({"T_HV_SPINLOCKS": value})
    outcome = run(vm_data=data, dom=dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "hyperv", "T_HV_SPINLOCKS", dom, data)


@pytest.mark.parametrize("attribute", [a for a, (r, _) in RULES.items() if r == "hyperv" and a != "T_HV_SPINLOCKS"])
@pytest.mark.parametrize("value", ["maybe", "2", "<on/>", "", "on;off", "\uff4f\uff4e"])
def test_hyperv_switch_hostile(attribute, value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(hyperv=True)
    data = hyperv_vm({attribute: value})
    outcome = run(vm_data=data, dom=dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "hyperv", attribute, dom, data)


def test_spinlocks_parser():  # type: ignore[no-untyped-def]
    assert parse_spinlocks("on") == (True, None)
    assert parse_spinlocks("retries=4096") == (True, 4096)
    assert parse_spinlocks("yes:retries=4294967295") == (True, 4294967295)
    assert parse_spinlocks("off") == (False, None)


# --- hyperv_clock ----------------------------------------------------------------------------------------------

HV_CLOCK = ('<timer name="hypervclock" present="yes"/><timer name="rtc" tickpolicy="catchup"/>'
            '<timer name="pit" tickpolicy="delay"/><timer name="hpet" present="no"/>')


def test_hyperv_clock(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(hyperv=True)
    data = hyperv_vm({"T_HV_CLOCK": "yes"})
    outcome = run(vm_data=data, dom=dom)
    assert_valid(outcome.tree)
    assert result(outcome, "hyperv-clock").status == APPLIED
    root = outcome.tree.getroot()
    assert flat(root.find("clock")) == f'<clock offset="utc">{HV_CLOCK}</clock>'
    assert root.index(root.find("clock")) == root.index(root.find("features")) + 1
    assert_idempotent(outcome, data)


def test_hyperv_clock_merges_timers_and_keeps_oneds_localtime(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(hyperv=True, clock="<clock offset='localtime'><timer name='kvmclock' present='no'/>"
                                    "<timer name='rtc' tickpolicy='delay' track='guest'/></clock>")
    outcome = run(vm_data=hyperv_vm({"T_HV_CLOCK": "yes"}, **{"FEATURES/LOCALTIME": "yes"}), dom=dom)
    assert_valid(outcome.tree)
    assert flat(outcome.tree.getroot().find("clock")) == (
        '<clock offset="localtime"><timer name="kvmclock" present="no"/>'
        '<timer name="rtc" tickpolicy="catchup" track="guest"/><timer name="hypervclock" present="yes"/>'
        '<timer name="pit" tickpolicy="delay"/><timer name="hpet" present="no"/></clock>')
    variable = run(vm_data=hyperv_vm({"T_HV_CLOCK": "yes"}),
                   dom=domain(hyperv=True, clock="<clock offset='variable' adjustment='10' basis='localtime'/>"))
    assert_valid(variable.tree)
    assert flat(variable.tree.getroot().find("clock")) == f'<clock offset="utc" adjustment="10">{HV_CLOCK}</clock>'


def test_hyperv_clock_only_with_hyperv_and_yes():  # type: ignore[no-untyped-def]
    for user, dom in (({"T_HV_CLOCK": "yes"}, domain()), ({"T_HV_CLOCK": "no"}, domain(hyperv=True))):
        outcome = run(user, dom)
        assert result(outcome, "hyperv-clock").status == UNCHANGED
        assert outcome.tree.getroot().find("clock") is None


@pytest.mark.parametrize("value", [*COMMON_HOSTILE, "maybe", "2", "<yes/>"])
def test_hyperv_clock_hostile(value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(hyperv=True)
    outcome = run({"T_HV_CLOCK": value}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "hyperv-clock", "T_HV_CLOCK", dom)


# --- kvm_hide ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "state"), [("on", "on"), ("1", "on"), ("off", "off")])
def test_kvm_hide(value, state, assert_valid):  # type: ignore[no-untyped-def]
    data = vm({"T_KVM_HIDE": value})
    outcome = run(vm_data=data)
    assert_valid(outcome.tree)
    assert flat(outcome.tree.getroot().find("features")) == (
        f'<features><acpi/><kvm><hidden state="{state}"/></kvm></features>')
    assert_idempotent(outcome, data)


def test_kvm_hide_updates_an_existing_hidden(assert_valid):  # type: ignore[no-untyped-def]
    dom = domain(features="<kvm><hint-dedicated state='on'/><hidden state='off'/></kvm>")
    outcome = run({"T_KVM_HIDE": "on"}, dom)
    assert_valid(outcome.tree)
    assert flat(outcome.tree.getroot().find("features/kvm")) == (
        '<kvm><hint-dedicated state="on"/><hidden state="on"/></kvm>')


@pytest.mark.parametrize("value", [*COMMON_HOSTILE, "maybe", "2", "<on/>", "hidden"])
def test_kvm_hide_hostile(value, assert_valid):  # type: ignore[no-untyped-def]
    dom = domain()
    outcome = run({"T_KVM_HIDE": value}, dom)
    assert_valid(outcome.tree)
    assert_skipped(outcome, "kvm-hide", "T_KVM_HIDE", dom)


# --- everything together, and fuzzing ----------------------------------------------------------------------------

def test_uefi_secure_boot_vm_end_to_end(assert_valid):  # type: ignore[no-untyped-def]
    data = vm({"T_OS_LOADER": f"{OVMF}/OVMF_CODE_4M.secboot.fd", "T_OS_NVRAM": "storpool",
               "T_OS_SECURE_BOOT": "yes", "T_FEATURE_SMM_TSEG": "48", "T_KVM_HIDE": "on"})
    outcome = run(vm_data=data, dom=domain(uefi=False))
    assert_valid(outcome.tree)
    root = outcome.tree.getroot()
    assert flat(root.find("os")) == (
        '<os><type arch="x86_64" machine="q35">hvm</type>'
        f'<loader readonly="yes" type="pflash" secure="yes">{OVMF}/OVMF_CODE_4M.secboot.fd</loader>'
        '<nvram type="block"><source dev="/dev/storpool/one-sys-42-NVRAM"/></nvram></os>')
    assert flat(root.find("features")) == (
        '<features><acpi/><kvm><hidden state="on"/></kvm>'
        '<smm state="on"><tseg unit="MiB">48</tseg></smm></features>')
    assert_idempotent(outcome, data)


def _fuzz_domain(attribute: str) -> bytes:
    return domain(hyperv=True) if attribute.startswith("T_HV_") else domain()


_FUZZ_DOMAINS: dict[str, bytes] = {}
_FUZZ_BASELINES: dict[str, bytes] = {}


@pytest.mark.parametrize("attribute", sorted(RULES))
@FUZZ
@given(data=st.data())
def test_fuzz_every_attribute(attribute, data, assert_valid):  # type: ignore[no-untyped-def]
    """Any text, or a good value with anything appended: never invalid XML, never a rollback;
    a skip warns and leaves the document as it was without the attribute."""
    rule, good = RULES[attribute]
    value = data.draw(st.one_of(
        xml_text(),
        st.builds(lambda g, j: g + j, st.sampled_from(good), xml_text(20)),
        st.sampled_from(COMMON_HOSTILE),
    ))
    dom = _FUZZ_DOMAINS.setdefault(attribute, _fuzz_domain(attribute))
    vm_data = hyperv_vm({attribute: value}) if attribute.startswith("T_HV_") else vm({attribute: value})
    outcome = apply(dom, vm_data)
    assert_valid(outcome.tree)
    res = result(outcome, rule)
    assert res.status in (APPLIED, UNCHANGED, SKIPPED), (value, res.status, res.reason)
    if res.status == SKIPPED:
        assert any(f"rule {rule}:" in w and f"USER_TEMPLATE/{attribute}" in w for w in outcome.report.warnings)
        plain = hyperv_vm() if attribute.startswith("T_HV_") else vm()
        expected = _FUZZ_BASELINES.setdefault(attribute, out_bytes(apply(dom, plain)))
        assert out_bytes(outcome) == expected


@FUZZ
@given(junk=xml_text(30))
def test_fuzz_loader_never_leaves_the_allowlist(junk, assert_valid):  # type: ignore[no-untyped-def]
    """A path made by inserting anything after an allowed directory is either still inside
    it (written normalised) or rejected."""
    path = f"{OVMF}/{junk}/OVMF_CODE.fd"
    outcome = run({"T_OS_LOADER": path})
    assert_valid(outcome.tree)
    written = outcome.tree.getroot().findtext("os/loader")
    if result(outcome, "os-loader").status == APPLIED:
        assert written.startswith(f"{OVMF}/") and ".." not in written and "//" not in written
        assert written == norm_path(path)
    else:
        assert written == f"{OVMF}/OVMF_CODE.fd"
