"""os_nvram: the UEFI variable store ``<os><nvram>`` (T_OS_NVRAM ``WHERE[:OPTION ...]``).

WHERE (addon-storpool's ``storpool|file`` row, without its bugs):

- ``storpool``: the storage driver's NVRAM volume. The device path comes from the
  operator's ``device`` template (default ``/dev/storpool/{px}-sys-{vm_id}-NVRAM``, the
  addon-storpool name; ``px`` default ``one`` = its ONE_PX). Result
  ``<nvram type='block'><source dev='DEV'/></nvram>`` (libvirt >= 8.5). The add-on's
  older ``<nvram>DEV</nvram>`` form (``type=file``) is refused: libvirt 9.0 opens it with
  qemu's ``file`` driver, which rejects a device ("requires a regular file"), so the VM
  would not start.
  ``template=`` is checked but not written: libvirt 9.0 never fills a block NVRAM from a
  template (the storage driver copies it when it creates the volume), and without it
  ``virsh start --reset-nvram`` cannot replace the device node with a file.
  When the storage side supplies a network NVRAM volume (``storage.nvram_protocol``,
  ``storage.nvram_name``, optional ``storage.nvram_hosts``, ``storage.nvram_user``,
  ``storage.nvram_secret``, ``storage.nvram_secret_type``: a network backend's
  ``Backend.facts``), the result is ``<nvram type='network'><source protocol=P name=N><host
  .../><auth username=U><secret type=T uuid=S/></auth></source></nvram>`` instead (libvirt 9.0
  with OVMF under TCG keeps the variables there across restarts: tests/test_rbd_live.py).
- ``file``: ``<system datastore dir>/<VM name>_VARS.fd``, the file oned 6.2+ itself uses.
- ``NAME``: ``<system datastore dir>/NAME`` (letters, digits, ``. _ + -``).
- ``/ABS/PATH``: accepted only directly inside the system datastore directory.

The system datastore directory is the domain's ``<one:system_datastore>`` metadata; a
file NVRAM never points anywhere else. Result: ``<nvram template='T'>PATH</nvram>``.

OPTION (space-separated): ``template=T`` (the VARS template: an absolute path in the
operator's ``templates`` allowlist, or a bare file name looked up in ``template_dir``),
``type=block|file`` (``block`` only for ``storpool``, where it is the default).

The domain must already have a UEFI loader (``<loader>``, e.g. from T_OS_LOADER or
OS/FIRMWARE) or ``<os firmware='efi'>``. oned 6.2+ writes the NVRAM itself for
OS/FIRMWARE: that wins over a rule default, an explicit T_OS_NVRAM wins over it.
"""

from __future__ import annotations

import re
import string

from lxml import etree

from ..errors import ParamError
from ..params import Choice, Format, Param, Text, split_key_values
from ..tweak import Context, Tweak
from ._disks import network_source
from ._firmware import (
    FIRMWARE_DIRS,
    OS_ORDER,
    PathList,
    attrs_of,
    file_name,
    norm_path,
    operator_only,
    parse_path_list,
    system_datastore,
    vm_name,
)

VOLUME = "storpool"
DEFAULT_FILE = "file"
DEVICE_FIELDS = frozenset({"px", "vm_id"})
_VM_ID = re.compile(r"[0-9]{1,10}")
_DOMAIN_NAME = re.compile(r"one-([0-9]{1,10})")


class NvramSpec:
    """A parsed T_OS_NVRAM.

    ``where``: VOLUME, DEFAULT_FILE, a file name or a normalised absolute path;
    ``kind``: block or file; ``template``: a normalised absolute path or a bare name.
    """

    __slots__ = ("kind", "template", "where")

    def __init__(self, where: str, kind: str, template: str | None) -> None:
        self.where = where
        self.kind = kind
        self.template = template


def _template(text: str) -> str:
    if text.startswith("/"):
        return norm_path(text, "template")
    return file_name(text, "template")


KEYS: dict[str, Param] = {
    "template": Format("template", "", parser=_template),
    "type": Choice("type", "", choices=("block", "file")),
}


def parse_nvram(text: str) -> NvramSpec:
    head, _, tail = text.partition(":")
    head = head.strip()
    values = split_key_values(tail, KEYS)
    if head.lower() == VOLUME:
        where, default_kind = VOLUME, "block"
    elif head.lower() == DEFAULT_FILE:
        where, default_kind = DEFAULT_FILE, "file"
    elif head.startswith("/"):
        where, default_kind = norm_path(head, "NVRAM path"), "file"
    elif head:
        where, default_kind = file_name(head, "NVRAM file name"), "file"
    else:
        raise ParamError(f"no NVRAM given: start with {VOLUME}, {DEFAULT_FILE} or a file name")
    kind = values.get("type", default_kind)
    if where != VOLUME and kind != "file":
        raise ParamError(f"type=block is only for the {VOLUME} volume")
    if where == VOLUME and kind != "block":
        raise ParamError(f"type=file cannot hold the {VOLUME} volume (qemu opens it as a regular file)")
    return NvramSpec(where, kind, values.get("template"))


class DeviceTemplate(str):
    """A device path with ``{px}`` and ``{vm_id}`` fields."""


def parse_device(text: str) -> DeviceTemplate:
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
    except ValueError:
        raise ParamError("unbalanced { } in device template") from None
    names = {name for name, _, _ in fields}
    if any(spec or conv for _, spec, conv in fields) or not names <= DEVICE_FIELDS:
        raise ParamError(f"device template fields are {{px}} and {{vm_id}} only, got {sorted(names)}")
    if "vm_id" not in names:
        raise ParamError("device template must contain {vm_id} (one volume per VM)")
    sample = norm_path(text.format(px="one", vm_id="0"), "device template")
    if not sample.startswith("/dev/"):
        raise ParamError("device template must be below /dev/")
    return DeviceTemplate(text)


class OsNvram(Tweak):
    summary = "UEFI NVRAM: the storage driver's volume, or a file in the VM's system datastore directory"
    attributes = ("T_OS_NVRAM",)
    params = (
        Format("nvram", "storpool|file|NAME|/path[:template=T type=block|file]", parser=parse_nvram,
               syntax="storpool|file|NAME[:template=T type=block|file]", pattern=r"^[^:]+(:.*)?$"),
        Format("templates", "allowed NVRAM template files; entries ending in / allow every file below",
               default=parse_path_list(FIRMWARE_DIRS), parser=parse_path_list, syntax="/dir/ /file ...",
               max_len=2048),
        Format("template_dir", "directory of bare template names (template=OVMF_VARS.fd)",
               default="/usr/share/OVMF", parser=lambda t: norm_path(t, "template_dir", directory=True),
               syntax="/dir"),
        Format("device", "device path of the NVRAM volume; fields {px} and {vm_id}",
               default=parse_device("/dev/storpool/{px}-sys-{vm_id}-NVRAM"), parser=parse_device,
               syntax="/dev/...{px}...{vm_id}..."),
        Text("px", "name prefix of the storage driver's volumes (addon-storpool ONE_PX)", default="one",
             pattern=r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}", max_len=32, hint="a name prefix like one"),
    )

    def apply(self, ctx: Context) -> None:
        operator_only(ctx, "templates", "template_dir", "device", "px")
        if ctx.facts.get("template.OS/FIRMWARE") and not ctx.explicit("nvram"):
            ctx.note("kept oned's OS/FIRMWARE nvram")
            return
        spec: NvramSpec = ctx.params["nvram"]
        os_el = ctx.root.find("os")
        if os_el is None:
            ctx.note("the domain has no <os>")
            return
        if os_el.find("loader") is None and os_el.get("firmware") != "efi":
            raise ctx.reject("nvram", "the domain has no UEFI loader (set T_OS_LOADER or OS/FIRMWARE)")
        template = self._template(ctx, spec)
        if spec.where == VOLUME:
            network = self._network(ctx)
            if network is not None:
                self._write_network(ctx, *network)
                return
            device = self._device(ctx)
            if spec.kind == "block":
                self._write(ctx, {"type": "block"}, None, device)
            else:
                self._write(ctx, {}, device, None)
            return
        path = self._file(ctx, spec)
        self._write(ctx, {"template": template} if template else {}, path, None)

    def _network(self, ctx: Context) -> tuple[dict[str, str], list[dict[str, str]],
                                              tuple[str, str, str] | None] | None:
        """The network NVRAM volume the storage side names, if any."""
        supplied = {f"storage_{key}": ctx.facts.get(f"storage.nvram_{key}") or ""
                    for key in ("protocol", "name", "hosts", "user", "secret", "secret_type")}
        if not supplied["storage_protocol"] and not supplied["storage_name"]:
            return None
        found = network_source(supplied)
        if isinstance(found, str):
            reason = found.replace("storage_", "storage.nvram_")
            raise ctx.reject("nvram", f"the storage driver's NVRAM volume: {reason}")
        return found

    def _write_network(self, ctx: Context, attrs: dict[str, str], hosts: list[dict[str, str]],
                       auth: tuple[str, str, str] | None) -> None:
        os_el = ctx.root.find("os")
        assert os_el is not None
        wanted = etree.Element("nvram", {"type": "network"})
        source = etree.SubElement(wanted, "source", attrs)
        for host in hosts:
            etree.SubElement(source, "host", host)
        if auth is not None:
            user, secret_type, uuid = auth
            auth_el = etree.SubElement(source, "auth", {"username": user})
            etree.SubElement(auth_el, "secret", {"type": secret_type, "uuid": uuid})
        nvram = os_el.find("nvram")
        if nvram is not None and _canonical(nvram) == _canonical(wanted):
            return
        editor = ctx.editor
        if nvram is None:
            nvram = editor.add(os_el, "nvram", {"type": "network"}, order=OS_ORDER)
        else:
            nvram = editor.replace(nvram, "nvram", {"type": "network"})
        new_source = editor.add(nvram, "source", attrs)
        for host in hosts:
            editor.add(new_source, "host", host)
        if auth is not None:
            user, secret_type, uuid = auth
            auth_el = editor.add(new_source, "auth", {"username": user})
            editor.add(auth_el, "secret", {"type": secret_type, "uuid": uuid})

    def _template(self, ctx: Context, spec: NvramSpec) -> str | None:
        if spec.template is None:
            return None
        path = spec.template
        if not path.startswith("/"):
            path = norm_path(f"{ctx.params['template_dir']}/{path}", "template")
        allowed: PathList = ctx.params["templates"]
        if not allowed.allows(path):
            raise ctx.reject("nvram", f"template {path} is not in the NVRAM template allowlist ({allowed})")
        return path

    def _device(self, ctx: Context) -> str:
        vm_id = ctx.facts.get("vm.id")
        if vm_id is None:
            match = _DOMAIN_NAME.fullmatch((ctx.root.findtext("name") or "").strip())
            vm_id = match.group(1) if match else None
        if vm_id is None or not _VM_ID.fullmatch(vm_id):
            raise ctx.reject("nvram", "the VM ID is unknown, so the NVRAM volume has no name")
        return norm_path(str(ctx.params["device"]).format(px=ctx.params["px"], vm_id=vm_id), "NVRAM device")

    def _file(self, ctx: Context, spec: NvramSpec) -> str:
        found = system_datastore(ctx.root)
        if found is None:
            raise ctx.reject("nvram", "the domain has no usable <one:system_datastore> metadata")
        raw, normal = found
        if spec.where == DEFAULT_FILE:
            name = vm_name(ctx.root) or ""
            try:
                return f"{raw}/{file_name(name + '_VARS.fd', 'NVRAM file name')}"
            except ParamError:
                raise ctx.reject("nvram", "the VM name does not make a plain file name: give one") from None
        if spec.where.startswith("/"):
            parent, _, name = spec.where.rpartition("/")
            if parent != normal:
                raise ctx.reject("nvram", f"{spec.where} is not directly in the system datastore directory {raw}")
            return f"{raw}/{name}"
        return f"{raw}/{spec.where}"

    def _write(self, ctx: Context, attrs: dict[str, str], text: str | None, device: str | None) -> None:
        editor = ctx.editor
        os_el = ctx.root.find("os")
        assert os_el is not None
        nvram = os_el.find("nvram")
        if nvram is not None and _same(nvram, attrs, text, device):
            return
        if nvram is None:
            nvram = editor.add(os_el, "nvram", attrs, order=OS_ORDER)
        else:
            nvram = editor.replace(nvram, "nvram", attrs)
        if text is not None:
            editor.set_text(nvram, text)
        if device is not None:
            editor.add(nvram, "source", {"dev": device})


def _canonical(el: etree._Element) -> tuple[object, ...]:
    return (el.tag, sorted(attrs_of(el).items()), (el.text or "").strip(),
            tuple(_canonical(c) for c in el if isinstance(c.tag, str)))


def _same(nvram: etree._Element, attrs: dict[str, str], text: str | None, device: str | None) -> bool:
    children = [c for c in nvram if isinstance(c.tag, str)]
    if attrs_of(nvram) != attrs:
        return False
    if device is None:
        return not children and (nvram.text or "").strip() == text
    return (len(children) == 1 and children[0].tag == "source" and attrs_of(children[0]) == {"dev": device}
            and not (nvram.text or "").strip())


TWEAK = OsNvram()
