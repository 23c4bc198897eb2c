"""``one-tweaks trash``: disks waiting for delayed deletion, and getting one back.

A deleted non-persistent disk (TM delete) is first kept as a snapshot
``<volume>-DELETED-<time>`` tagged ``trash=<volume>`` that the backend removes itself
after DELAY_DELETE. ``trash list`` shows them; ``trash restore SNAPSHOT --datastore ID``
registers a new image in that image datastore whose volume is a copy of the snapshot.

    one-tweaks trash list [--datastore ID] [--json]
    one-tweaks trash restore SNAPSHOT --datastore ID [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from onelib import xmldoc
from onelib.errors import DriverError, Transient

from .backend import Backend, Volume
from .backends import all_backends
from .driver import Driver
from .naming import Names

MIB = 1024 * 1024


def _driver(ds_id: int | None, driver: str | None) -> Driver:
    """The driver whose trash is meant: ``--driver``, else the datastore's (``--datastore``),
    else the one backend that keeps deleted disks (``delayed_delete``)."""
    if ds_id is not None:
        probe = Driver(driver or "")
        datastore = probe.oned.datastore(ds_id)
        driver = driver or xmldoc.text(datastore, "TM_MAD") or xmldoc.text(datastore, "DS_MAD")
        return Driver(driver, datastore, oned=probe.oned)
    if driver is None:
        keeping = [cls.driver for cls in all_backends() if cls.delayed_delete]
        if len(keeping) != 1:
            which = ", ".join(keeping) or "none keeps deleted disks"
            raise DriverError(f"name the storage driver with --driver ({which})")
        driver = keeping[0]
    return Driver(driver)


def trashed(drv: Driver) -> list[Volume]:
    return sorted((s for s in drv.backend.snapshots()
                   if s.tags.get("trash") and s.tags.get("nloc", drv.names.px) == drv.names.px),
                  key=lambda s: s.name)


def cmd_list(args: argparse.Namespace) -> int:
    drv = _driver(args.datastore, args.driver)
    items = trashed(drv)
    if args.json:
        print(json.dumps([{"snapshot": s.name, "volume": s.tags["trash"], "vm": s.tags.get("nvm", ""),
                           "disk": s.tags.get("diskid", ""), "size_mb": s.size // MIB,
                           "expires_in_s": s.delete_after} for s in items], indent=2))
        return 0
    if not items:
        print("no deleted disks are waiting")
        return 0
    print(f"{'SNAPSHOT':48} {'VM':>6} {'DISK':>4} {'SIZE_MB':>9}  EXPIRES_IN")
    for s in items:
        left = f"{s.delete_after // 3600}h{s.delete_after % 3600 // 60:02d}m" if s.delete_after else "-"
        print(f"{s.name:48} {s.tags.get('nvm', ''):>6} {s.tags.get('diskid', ''):>4} {s.size // MIB:>9}  {left}")
    return 0


# tag of a restored image's volume: the id of the image ``trash restore`` registered for it
RESTORED_TAG = "restored"


def restored_volume(backend: Backend, names: Names, volume: str, image_id: int) -> bool:
    """``volume`` is the volume ``trash restore`` made for image ``image_id`` (1-2 calls).
    Its name (``Names.restored``) is never another image's volume name, but a SOURCE can
    name a restored volume another image owns (an image registered by hand with that
    SOURCE), whose deletion must not take it: DS rm takes it only when its RESTORED_TAG
    names the image being deleted."""
    if not names.is_restored(volume):
        return False
    found = backend.get(volume)
    return found is not None and not found.snapshot and found.tags.get(RESTORED_TAG) == str(image_id)


def cmd_restore(args: argparse.Namespace) -> int:
    drv = _driver(args.datastore, args.driver)
    snap = drv.backend.get(args.snapshot)
    if snap is None or not snap.snapshot or not snap.tags.get("trash"):
        raise DriverError(f"{args.snapshot} is not a deleted disk waiting in the trash (see: one-tweaks trash list)")
    volume = drv.names.restored(int(time.time()))
    source = drv.names.source(volume)   # the SOURCE the driver's own DS actions print
    name = args.name or f"restored {snap.tags['trash']}"
    template = (f'NAME="{_quote(name)}"\nSOURCE="{source}"\nSIZE="{max(snap.size // MIB, 1)}"\n'
                f'FORMAT="raw"\nTYPE="DATABLOCK"\nPERSISTENT="NO"\n'
                f'DESCRIPTION="restored from {snap.name}"\n')
    with drv.lock(volume):
        drv.backend.clone(snap.name, volume, placement=drv.placement(), from_snapshot=True,
                          tags={"virt": "one", "nloc": drv.names.px})
        try:
            image_id = drv.oned.image_allocate(template, drv.ds_id)
        except Transient as exc:
            # no reply: oned may have registered the image over this volume, so it stays
            raise Transient(f"{exc}; whether image {name!r} was registered is unknown, so its volume {volume} "
                            f"is kept: if `oneimage list` shows no image with SOURCE {source}, that volume is left "
                            f"over (remove it in the {drv.driver} storage) and the restore can be run again") from None
        except BaseException:
            drv.backend.delete(volume)
            raise
        try:
            drv.backend.set_tags(volume, {RESTORED_TAG: str(image_id)})
        except DriverError as exc:
            raise DriverError(f"image {image_id} was registered, but its volume {volume} could not be marked as "
                              f"its own ({exc}): deleting the image will keep the volume") from None
    print(f"image {image_id} ({name}) restored from {snap.name} as volume {volume}")
    return 0


def _quote(text: str) -> str:
    if any(c in text for c in '"\\\n\r'):
        raise DriverError("image name must not contain quotes, backslashes or newlines")
    return text


def main(argv: Sequence[str]) -> int:
    from onelib import log

    log.setup("one-tweaks-trash")
    p = argparse.ArgumentParser(prog="one-tweaks trash", description="disks waiting for delayed deletion")
    p.add_argument("--driver", help="storage driver (default: the datastore's, else the one that keeps deleted disks)")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list deleted disks that can still be restored")
    ls.add_argument("--datastore", type=int, help="use this datastore's connection settings")
    ls.add_argument("--json", action="store_true")
    rs = sub.add_parser("restore", help="register a deleted disk as a new image")
    rs.add_argument("snapshot", help="the snapshot name that `trash list` shows")
    rs.add_argument("--datastore", type=int, required=True, help="image datastore for the new image")
    rs.add_argument("--name", help="the new image's name")
    args = p.parse_args(list(argv))
    try:
        return cmd_list(args) if args.command == "list" else cmd_restore(args)
    except DriverError as exc:
        sys.stderr.write(f"one-tweaks trash: {exc}\n")
        return 1
