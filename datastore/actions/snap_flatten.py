"""snap_flatten: the image keeps the content of ``<vol>-snap<TARGET_SNAPSHOT>`` and loses
all its snapshots: revert to it, delete the other snapshots, delete it last.

Re-running after a crash finishes the job: the target snapshot is deleted last, so when it
is missing and no snapshot of the image is left, an earlier run already flattened it."""

from __future__ import annotations

from onelib.errors import DriverError

from ..entry import DsRequest
from ..imageds import DsAction


def run(request: DsRequest) -> str:
    act = DsAction(request)
    volume = act.image_volume(act.image_id())
    target = act.names.disk_snapshot(volume, act.snapshot_id())
    names = act.names
    backend = act.driver.backend
    with act.driver.lock(volume):
        snapshots = [s.name for s in backend.snapshots(names.disk_snapshot_prefix(volume))
                     if names.disk_snapshot_id(volume, s.name) is not None]
        if target not in snapshots:
            if snapshots:
                raise DriverError(f"snap_flatten: snapshot {target} does not exist")
            return ""
        backend.revert(volume, target)
        for name in snapshots:
            if name != target:
                backend.delete(name, snapshot=True)
        backend.delete(target, snapshot=True)
    return ""
