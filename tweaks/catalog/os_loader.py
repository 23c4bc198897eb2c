"""os_loader: the UEFI firmware ``<os><loader>`` (T_OS_LOADER ``PATH[:k=v ...]``).

Result: ``<loader readonly='yes' type='pflash'>PATH</loader>``, replacing the existing
loader; of its attributes only ``secure`` is kept when T_OS_LOADER does not give it
(so T_OS_SECURE_BOOT and oned's FIRMWARE_SECURE keep working, and rules stay idempotent).
Keys: ``readonly``, ``secure``, ``stateless`` (yes/no) and ``type`` (pflash/rom);
``readonly=yes type=pflash`` are the defaults, as every OVMF ``*_CODE*.fd`` needs them
(addon-storpool called them mandatory).

PATH must be in the operator's ``loaders`` allowlist: an exact file, or any file below a
directory entry written with a trailing ``/``. The shipped default is the firmware
directories of OpenNebula's OVMF_UEFIS (6.10 and 7.2). The path is checked as a string
(the host's files are not visible here): absolute, plain components, no ``..``; repeated
slashes are collapsed and the collapsed form is written.

libvirt 9.0 refuses a loader path together with firmware auto-selection, so a domain
with ``<os firmware=...>`` is rejected (``T_OS="firmware="`` deletes that attribute).

``secure=yes`` makes libvirt refuse to start the VM unless the machine is q35 and SMM is
on, so it is rejected on other x86 machines and turns ``<features><smm state='on'>`` on.

oned 6.2+ writes the loader itself for OS/FIRMWARE: that wins over a rule default, an
explicit T_OS_LOADER wins over it.
"""

from __future__ import annotations

from ..errors import ParamError
from ..params import Bool, Choice, Format, Param, split_key_values
from ..tweak import Context, Tweak
from ._firmware import (
    FIRMWARE_DIRS,
    OS_ORDER,
    PathList,
    attrs_of,
    check_secure_loader,
    norm_path,
    operator_only,
    parse_path_list,
    turn_smm_on,
)

KEYS: dict[str, Param] = {
    "readonly": Bool("readonly", ""),
    "type": Choice("type", "", choices=("pflash", "rom")),
    "secure": Bool("secure", ""),
    "stateless": Bool("stateless", ""),
}
ATTR_ORDER = ("readonly", "type", "secure", "stateless")


class LoaderSpec:
    """A parsed T_OS_LOADER: the normalised path and the loader attributes."""

    __slots__ = ("attrs", "path")

    def __init__(self, path: str, attrs: dict[str, str]) -> None:
        self.path = path
        self.attrs = attrs


def parse_loader(text: str) -> LoaderSpec:
    head, _, tail = text.partition(":")
    path = norm_path(head.strip(), "loader path")
    values = split_key_values(tail, KEYS)
    attrs = {k: ("yes" if v else "no") if isinstance(v, bool) else str(v) for k, v in values.items()}
    attrs.setdefault("type", "pflash")
    if attrs["type"] == "pflash":
        attrs.setdefault("readonly", "yes")
    elif attrs.get("secure") == "yes":
        raise ParamError("secure=yes needs type=pflash")
    return LoaderSpec(path, {k: attrs[k] for k in ATTR_ORDER if k in attrs})


class OsLoader(Tweak):
    summary = "UEFI firmware <os><loader> from an operator allowlist"
    attributes = ("T_OS_LOADER",)
    params = (
        Format("loader", "PATH[:readonly=yes|no type=pflash|rom secure=yes|no stateless=yes|no]",
               parser=parse_loader, syntax="/path/OVMF_CODE.fd[:k=v ...]",
               pattern=r"^/[^:]*(:.*)?$"),
        Format("loaders", "allowed loader files; entries ending in / allow every file below that directory",
               default=parse_path_list(FIRMWARE_DIRS), parser=parse_path_list, syntax="/dir/ /file ...",
               max_len=2048),
    )

    def apply(self, ctx: Context) -> None:
        operator_only(ctx, "loaders")
        if ctx.facts.get("template.OS/FIRMWARE") and not ctx.explicit("loader"):
            ctx.note("kept oned's OS/FIRMWARE loader")
            return
        spec: LoaderSpec = ctx.params["loader"]
        allowed: PathList = ctx.params["loaders"]
        if not allowed.allows(spec.path):
            raise ctx.reject("loader", f"{spec.path} is not in the loader allowlist ({allowed})")
        os_el = ctx.root.find("os")
        if os_el is None:
            ctx.note("the domain has no <os>")
            return
        if os_el.get("firmware"):
            raise ctx.reject("loader", f"libvirt refuses a loader path with <os firmware='{os_el.get('firmware')}'> "
                                       "(auto-selection); T_OS=firmware= deletes it")
        editor = ctx.editor
        loader = os_el.find("loader")
        wanted = dict(spec.attrs)
        if "secure" not in wanted and loader is not None and loader.get("secure") in ("yes", "no"):
            wanted["secure"] = str(loader.get("secure"))  # T_OS_SECURE_BOOT's (or oned's) choice stays
        wanted = {k: wanted[k] for k in ATTR_ORDER if k in wanted}
        secure = wanted.get("secure") == "yes"
        if secure and wanted["type"] != "pflash":
            raise ctx.reject("loader", "the loader is secure='yes', which needs type=pflash")
        if secure:
            check_secure_loader(ctx, "loader")
        same = (loader is not None and attrs_of(loader) == wanted and not len(loader)
                and (loader.text or "").strip() == spec.path)
        if not same:
            if loader is None:
                loader = editor.add(os_el, "loader", wanted, order=OS_ORDER)
            else:
                loader = editor.replace(loader, "loader", wanted)
            editor.set_text(loader, spec.path)
        if secure:
            turn_smm_on(editor)


TWEAK = OsLoader()
