"""rm: delete an image's volume (detached from every host first), the snapshots that belong
to it (disk snapshots ``<vol>-snapN``, an interrupted export's ``<vol>-export-N``, and,
unless VMSNAPSHOT_DELETE_ON_TERMINATE=0, VM snapshots ``<vol>-ONESNAP-N-T``) and a staging
volume a crashed import left. The volume is addon-storpool's ``<PX>-img-<ID>`` (never taken
from SOURCE, which could name another image's volume; restored images below). Anything
already gone is fine.

REMOTE_BACKUP_DELETE (datastore attribute, else the configuration), addon-storpool's
"send a copy to another cluster before deleting"::

    REMOTE_BACKUP_DELETE="<location> [tag NAME=VALUE | NAME=VALUE]..."

``<location>`` is the StorPool remote location (``[A-Za-z0-9_.:-]``, at most 63
characters); the optional arguments are tags stored with the backup (StorPool CLI's
``tag NAME=VALUE``; the ``tag`` word may be left out). Anything else is refused before
anything changes. The image volume is backed up (VolumeBackup) before anything is deleted;
when that fails, nothing is deleted: the volume is tagged ``del=y`` (its other tags stay)
and renamed ``<vol>-<unix time>``, and rm fails with one line naming it. A backend without
remote backups refuses (nothing changes). A volume that is already gone (a re-run after
the volume was deleted, or kept under its new name) needs no backup: the rest is cleaned up.

An image ``one-tweaks trash restore`` registered has the volume its SOURCE names,
``<PX>-img-restored-<time>`` (a name no other image's volume has), tagged ``restored=<ID>``
with the image's id: rm takes that one (1-2 calls to check the tag), and never a restored
volume whose tag names another image (an image registered by hand with its SOURCE).

API calls: 1 (SnapshotsList) + 2 (image: detach, delete) + 1 (staging: absent) + 2 per snapshot;
with REMOTE_BACKUP_DELETE 1 more (VolumeBackup), or, when it fails, 1 (look the volume up)
+ 2 (tag, rename) and nothing deleted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from onelib import log, xmldoc
from onelib.errors import DriverError

from ..backend import Backend
from ..entry import DsRequest
from ..imageds import DsAction
from ..trash import restored_volume

_LOCATION = re.compile(r"[A-Za-z0-9_.:-]{1,63}")
_TAG = re.compile(r"([A-Za-z0-9_.:-]{1,63})=([A-Za-z0-9_.:-]{1,63})")
KEEP_TAG = {"del": "y"}


def remote_backup_setting(value: str) -> tuple[str, dict[str, str]]:
    """REMOTE_BACKUP_DELETE's location and the tags its extra arguments give."""
    words = value.split()
    location = words[0]
    if not _LOCATION.fullmatch(location) or location == "list":
        raise DriverError(f"rm: REMOTE_BACKUP_DELETE location {location!r} is not a remote location "
                          f"name ([A-Za-z0-9_.:-], at most 63 characters); nothing was deleted")
    tags: dict[str, str] = {}
    rest = iter(words[1:])
    for word in rest:
        arg = next(rest, "") if word == "tag" else word
        found = _TAG.fullmatch(arg)
        if found is None:
            raise DriverError(f"rm: REMOTE_BACKUP_DELETE argument {arg or word!r} is not tag NAME=VALUE "
                              f"([A-Za-z0-9_.:-]); nothing was deleted")
        tags[found[1]] = found[2]
    return location, tags


def backup_or_keep(backend: Backend, volume: str, location: str, tags: Mapping[str, str]) -> None:
    """Back ``volume`` up to ``location``; when that fails and the volume exists, tag it
    del=y, rename it ``<volume>-<unix time>`` and fail (nothing is deleted)."""
    try:
        remote_id = backend.backup_remote(volume, location, tags)
    except DriverError as exc:
        reason = str(exc)
        try:
            if backend.get(volume) is None:
                return   # gone already: nothing to back up, nothing to lose
            kept = f"{volume}-{int(time.time())}"
            backend.set_tags(volume, KEEP_TAG)        # first: a crash here leaves it where a re-run looks
            backend.rename(volume, kept)
        except DriverError as err:
            raise DriverError(f"rm: the remote backup of {volume} to {location} failed ({reason}) and keeping it "
                              f"aside failed too ({err}); nothing was deleted") from exc
        raise DriverError(f"rm: the image volume was kept as {kept} (tagged del=y) because the remote backup "
                          f"to {location} failed: {reason}") from exc
    log.info(f"rm: {volume} backed up to remote location {location}" + (f" as {remote_id}" if remote_id else ""))


def run(request: DsRequest) -> str:
    act = DsAction(request)
    image_id = act.image_id()
    final = act.names.image(image_id)
    source = xmldoc.text(act.image, "SOURCE")
    restored = act.names.source_volume(source) if source else ""
    if restored and restored_volume(act.driver.backend, act.names, restored, image_id):
        final = restored  # the volume `one-tweaks trash restore` made for this image
    staging = act.staging_name(image_id)
    setting = act.setting("REMOTE_BACKUP_DELETE")
    location, backup_tags = remote_backup_setting(setting) if setting else ("", {})
    kinds = [r"snap[0-9]+", r"export-[0-9]+"]
    if act.setting("VMSNAPSHOT_DELETE_ON_TERMINATE", "1").lower() not in ("0", "no", "false", "off"):
        kinds.append(r"ONESNAP-[0-9]+-[0-9]+")
    mine = re.compile(re.escape(final) + "-(?:" + "|".join(kinds) + ")")
    backend = act.driver.backend
    if location and not backend.remote_backup:
        raise DriverError(f"rm: datastore {act.ds_id} sets REMOTE_BACKUP_DELETE, but the {backend.name} backend "
                          f"cannot back volumes up to a remote location; image {image_id} was not deleted")
    with act.driver.lock(final):
        snapshots = [s.name for s in backend.snapshots(final + "-") if mine.fullmatch(s.name)]
        if location:
            backup_or_keep(backend, final, location, backup_tags)
        backend.delete(final)
        backend.delete(staging)
        for name in snapshots:
            backend.delete(name, snapshot=True)
    return ""
