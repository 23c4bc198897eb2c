"""rm: delete an image's volume (detached from every host first), the snapshots that belong
to it (disk snapshots ``<vol>-snapN``, an interrupted export's ``<vol>-export-N``, and,
unless VMSNAPSHOT_DELETE_ON_TERMINATE=0, VM snapshots ``<vol>-ONESNAP-N-T``) and a staging
volume a crashed import left. The volume is addon-storpool's ``<PX>-img-<ID>`` (never taken
from SOURCE, which could name another image's volume). Anything already gone is fine.

REMOTE_BACKUP_DELETE (addon-storpool: send a snapshot to another cluster before deleting)
is not supported: when the datastore sets it, rm refuses and deletes nothing, so an
operator who relies on that copy never loses an image without it.

API calls: 1 (SnapshotsList) + 2 (image: detach, delete) + 1 (staging: absent) + 2 per snapshot.
"""

from __future__ import annotations

import re

from onelib.errors import DriverError

from ..entry import DsRequest
from ..imageds import DsAction


def run(request: DsRequest) -> str:
    act = DsAction(request)
    image_id = act.image_id()
    final = act.names.image(image_id)
    staging = act.staging_name(image_id)
    if act.setting("REMOTE_BACKUP_DELETE"):
        raise DriverError(f"rm: datastore {act.ds_id} sets REMOTE_BACKUP_DELETE, which this driver does not "
                          f"support; image {image_id} was not deleted (unset it to delete)")
    kinds = [r"snap[0-9]+", r"export-[0-9]+"]
    if act.setting("VMSNAPSHOT_DELETE_ON_TERMINATE", "1").lower() not in ("0", "no", "false", "off"):
        kinds.append(r"ONESNAP-[0-9]+-[0-9]+")
    mine = re.compile(re.escape(final) + "-(?:" + "|".join(kinds) + ")")
    backend = act.driver.backend
    with act.driver.lock(final):
        snapshots = [s.name for s in backend.snapshots(final + "-") if mine.fullmatch(s.name)]
        backend.delete(final)
        backend.delete(staging)
        for name in snapshots:
            backend.delete(name, snapshot=True)
    return ""
