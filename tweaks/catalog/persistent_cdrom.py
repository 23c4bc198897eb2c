"""persistent_cdrom: empty CD-ROM drives to insert images into later (T_PERSISTENT_CDROM).

addon-storpool's persistent-cdrom.py with attach_disk/detach_disk.cdrom: CD-ROM images
are then attached with ``virsh change-media`` into drives that exist from boot, so the
guest sees no hot-plug. ``count`` (T_PERSISTENT_CDROM, 0..``max``) is the number of EMPTY
drives (no ``<source>``) the domain must have: existing empty drives count, so applying
again adds nothing. Each new drive is

    <disk type='block|file' device='cdrom'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <target dev='hdX' bus='sata|ide'/>
      <readonly/>
    </disk>

on the first free ``hda``..``hdd`` (a target any disk uses, e.g. the context CD-ROM's,
is not free), bus ``sata`` on q35 machines and ``ide`` otherwise (as oned does for
``hd*``); only x86 machines have those buses. ``type`` (T_PERSISTENT_CDROM_TYPE,
file|block, default block) is the drive type; the add-on ignored its global default
for it (a bug), here the rule's default and the VM attribute both apply.
``max`` (the add-on's MAX_CDROM_DEVICES, default 4) is the operator's cap: a larger
count gets ``max`` drives (as the add-on did), and --explain says so. When fewer targets
are free than needed, the free ones are used.
Note: the add-on counted all CD-ROM drives (context and image ones too) against the
count; here only empty drives count. libvirt 9.0 stores an empty ``type='block'`` drive
as ``type='file'``, so inserting a block device into it needs ``virsh change-media
--block`` whatever the drive type was (the CD-ROM attach script passes it).
"""

from __future__ import annotations

from lxml import etree

from ..domain import machine
from ..params import Choice, Int
from ..tweak import Context, Tweak

TARGETS = ("hda", "hdb", "hdc", "hdd")
MAX_DRIVES = len(TARGETS)
X86 = ("x86_64", "i686")


def is_empty_cdrom(disk: etree._Element) -> bool:
    if disk.get("device") != "cdrom":
        return False
    source = disk.find("source")
    if source is None:
        return True
    return not any(source.get(attr) for attr in ("file", "dev", "name", "volume", "pool"))


class PersistentCdrom(Tweak):
    summary = "empty CD-ROM drives on free hda..hdd (sata on q35, else ide)"
    attributes = ("T_PERSISTENT_CDROM", "T_PERSISTENT_CDROM_TYPE")
    params = (
        # a count above the cap is clamped to it (the add-on did), so it is not refused by the type
        Int("count", "empty CD-ROM drives the VM must have (more than max: max)", minimum=0, maximum=255),
        Choice("type", "drive type for new drives", default="block", choices=("block", "file")),
        Int("max", "operator cap on count", default=MAX_DRIVES, minimum=0, maximum=MAX_DRIVES),
    )

    def apply(self, ctx: Context) -> None:
        count: int = ctx.params["count"]
        cap: int = ctx.params["max"]
        if count > cap:
            ctx.note(f"{count} CD-ROM drives asked for, {cap} (the most allowed) added")
            count = cap
        root = ctx.root
        os_type = root.find("os/type")
        arch = os_type.get("arch") if os_type is not None else None
        if arch and arch not in X86:
            ctx.note(f"no IDE/SATA CD-ROM drives on {arch}")
            return
        disks = root.findall("devices/disk")
        missing = count - sum(1 for disk in disks if is_empty_cdrom(disk))
        if missing <= 0:
            return
        used = {target.get("dev") for target in root.iterfind("devices/disk/target")}
        free = [dev for dev in TARGETS if dev not in used]
        if len(free) < missing:
            ctx.note(f"only {len(free)} of hda..hdd free for {missing} more CD-ROM drives")
        bus = "sata" if "q35" in machine(root) else "ide"
        editor = ctx.editor
        devices = ctx.devices()
        for dev in free[:missing]:
            disk = editor.add(devices, "disk", {"type": ctx.params["type"], "device": "cdrom"},
                              after=("emulator", "disk"))
            editor.add(disk, "driver", {"name": "qemu", "type": "raw", "cache": "none", "io": "native"})
            editor.add(disk, "target", {"dev": dev, "bus": bus})
            editor.add(disk, "readonly")


TWEAK = PersistentCdrom()
