"""Helpers shared by the firmware and feature tweaks (os_*, secure_boot, smm, hyperv, ...).

Not a tweak itself (the leading underscore keeps it out of the catalogue).

Paths from VM attributes are checked as strings, never resolved on this machine (the
front-end is not the host that opens them): a path must be absolute, made of plain
components (letters, digits, ``. _ + -``; no ``.``/``..`` component, no ``..`` at all,
nothing hidden), and repeated slashes are collapsed before comparing it with an
allowlist. A directory entry of an allowlist (written with a trailing ``/``) allows
every file below it; any other entry allows exactly that file.
"""

from __future__ import annotations

import re

from lxml import etree

from ..errors import ParamError
from ..params import TRUE_WORDS
from ..tweak import Context
from ..xmledit import Editor

ONE_NS = "http://opennebula.org/xmlns/libvirt/1.0"
MAX_PATH = 255
MAX_ALLOWLIST = 32
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}")

# Directories of the firmware files OpenNebula lets users pick (OVMF_UEFIS in
# vmm_exec_kvm.conf, 6.10 and 7.2: OVMF, AAVMF and Fedora's edk2/ovmf), and the place
# addon-storpool documents for the OVMF files it ships in the remotes (its
# NVRAM_TEMPLATE_PATH default), so templates written for it keep their firmware.
FIRMWARE_DIRS = "/usr/share/OVMF/ /usr/share/AAVMF/ /usr/share/edk2/ovmf/ /var/tmp/one/OVMF/"

# libvirt's order of <os> and <features> children (as `virsh dumpxml` writes them).
OS_ORDER = ("type", "firmware", "loader", "nvram", "kernel", "initrd", "cmdline", "dtb", "acpi",
            "boot", "bootmenu", "smbios", "bios")
FEATURES_ORDER = ("pae", "acpi", "apic", "hap", "viridian", "privnet", "hyperv", "kvm", "xen", "pvspinlock",
                  "capabilities", "pmu", "vmport", "gic", "smm", "ioapic", "hpt", "vmcoreinfo", "htm",
                  "nested-hv", "msrs", "ccf-assist", "cfpc", "sbbc", "ibs", "tcg")


# --- paths ---------------------------------------------------------------------------
def file_name(text: str, what: str = "file name") -> str:
    """A single path component (no slash, nothing hidden, no ``..``)."""
    if ".." in text or not _COMPONENT.fullmatch(text):
        raise ParamError(f"{what} {text[:40]!r} is not a plain name (letters, digits, . _ + -)")
    return text


def norm_path(text: str, what: str = "path", *, directory: bool = False) -> str:
    """``text`` as an absolute path with repeated slashes collapsed, or ParamError.

    Relative paths, ``.``/``..`` components (and ``..`` anywhere), hidden or odd
    components and, unless ``directory``, a trailing slash are refused.
    """
    if len(text) > MAX_PATH:
        raise ParamError(f"{what} longer than {MAX_PATH} characters")
    if not text.startswith("/"):
        raise ParamError(f"{what} {text[:40]!r} is not an absolute path")
    if ".." in text:
        raise ParamError(f"{what} {text[:40]!r} contains '..'")
    if text.endswith("/") and not directory:
        raise ParamError(f"{what} {text[:40]!r} ends with '/'")
    parts = [p for p in text.split("/") if p]
    if not parts:
        raise ParamError(f"{what} is the root directory")
    for part in parts:
        file_name(part, f"{what} component")
    return "/" + "/".join(parts)


class PathList:
    """An operator allowlist: exact files, and directories (kept with a trailing ``/``)."""

    __slots__ = ("entries",)

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.entries = entries

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PathList) and other.entries == self.entries

    def __hash__(self) -> int:
        return hash(self.entries)

    def allows(self, path: str) -> bool:
        for entry in self.entries:
            if entry.endswith("/"):
                if path.startswith(entry):
                    return True
            elif path == entry:
                return True
        return False

    def __str__(self) -> str:
        return " ".join(self.entries)


def parse_path_list(text: str) -> PathList:
    """Whitespace-separated absolute paths; ``DIR/`` allows every file below DIR."""
    entries: list[str] = []
    for item in text.split():
        path = norm_path(item, "allowlist entry", directory=True)
        entry = path + "/" if item.endswith("/") else path
        if entry not in entries:
            entries.append(entry)
    if not entries:
        raise ParamError("empty allowlist")
    if len(entries) > MAX_ALLOWLIST:
        raise ParamError(f"more than {MAX_ALLOWLIST} allowlist entries")
    return PathList(tuple(entries))


def operator_only(ctx: Context, *names: str) -> None:
    """Refuse an operator setting (allowlist, device template...) taken from a VM attribute."""
    for name in names:
        if ctx.explicit(name):
            raise ctx.reject(name, "is an operator setting: give it as a literal in the rule file")


# --- reading the domain ----------------------------------------------------------------
def system_datastore(root: etree._Element) -> tuple[str, str] | None:
    """(as written, normalised) path of ``<one:system_datastore>``, None if absent or odd."""
    el = root.find(f"metadata/{{{ONE_NS}}}vm/{{{ONE_NS}}}system_datastore")
    if el is None or not el.text or not el.text.strip():
        return None
    raw = el.text.strip()
    try:
        return raw.rstrip("/"), norm_path(raw, "system datastore", directory=True)
    except ParamError:
        return None


def attrs_of(el: etree._Element) -> dict[str, str]:
    return {str(k): str(v) for k, v in el.attrib.items()}


def vm_name(root: etree._Element) -> str | None:
    el = root.find(f"metadata/{{{ONE_NS}}}vm/{{{ONE_NS}}}name")
    return el.text.strip() if el is not None and el.text else None


def machine_is_x86(root: etree._Element) -> bool:
    os_type = root.find("os/type")
    arch = "" if os_type is None else os_type.get("arch", "")
    return arch in ("", "x86_64", "i686")


def machine_is_q35(root: etree._Element) -> bool:
    os_type = root.find("os/type")
    return os_type is not None and "q35" in os_type.get("machine", "")


def secure_boot_requested(root: etree._Element) -> bool:
    """A secure loader, or secure-boot asked of libvirt's firmware auto-selection."""
    loader = root.find("os/loader")
    if loader is not None and loader.get("secure") == "yes":
        return True
    for feature in root.iterfind("os/firmware/feature"):
        if feature.get("name") == "secure-boot" and feature.get("enabled") == "yes":
            return True
    return False


def smm_state(root: etree._Element) -> str | None:
    smm = root.find("features/smm")
    return None if smm is None else smm.get("state", "")


# --- writing -------------------------------------------------------------------------------
def features(editor: Editor) -> etree._Element:
    """The domain's ``<features>`` (the engine merged duplicates), created if missing."""
    return editor.child(editor.root, "features")


def feature(editor: Editor, tag: str) -> etree._Element:
    """``<features><tag>``, found or created at libvirt's place."""
    parent = features(editor)
    return editor.child(parent, tag, order=FEATURES_ORDER)


def clock(editor: Editor, offset: str = "utc") -> etree._Element:
    """The domain's ``<clock>``, created with ``offset`` right after ``<features>`` (libvirt's
    place; oned's trailing ``<metadata>`` would otherwise draw it to the end)."""
    root = editor.root
    found = root.find("clock")
    if found is not None:
        return found
    feats = root.find("features")
    index = None if feats is None else root.index(feats) + 1
    return editor.add(root, "clock", {"offset": offset}, index=index)


def turn_smm_on(editor: Editor) -> None:
    editor.set_attr(feature(editor, "smm"), "state", "on")


def check_secure_loader(ctx: Context, name: str) -> None:
    """libvirt starts a secure loader only on q35 (x86) and with SMM on."""
    if machine_is_x86(ctx.root) and not machine_is_q35(ctx.root):
        raise ctx.reject(name, "secure boot needs a q35 machine type")
    if smm_state(ctx.root) == "off" and not _smm_turned_on(ctx):
        raise ctx.reject(name, "secure boot needs SMM, which is turned off (<smm state='off'>)")


def _smm_turned_on(ctx: Context) -> bool:
    """The VM turns SMM on (T_FEATURE_SMM=on): the smm rule runs after the loader's, so
    refusing here and accepting on the next run would make the rules change their own output."""
    raw = (ctx.facts.get("user.T_FEATURE_SMM") or "").strip().lower()
    return raw.removeprefix(":state=").strip() in TRUE_WORDS


def parse_uuid(text: str) -> str:
    """A UUID (8-4-4-4-12 hex, or 32 hex digits) in canonical lowercase form."""
    if not _UUID.fullmatch(text):
        raise ParamError("not a UUID (8-4-4-4-12 or 32 hex digits)")
    digits = text.replace("-", "").lower()
    if len(set(digits)) == 1:
        raise ParamError("all-zero or all-f UUID")
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def same_uuid(a: str, b: str) -> bool:
    return a.replace("-", "").lower() == b.replace("-", "").lower()
