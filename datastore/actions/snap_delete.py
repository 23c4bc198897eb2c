"""snap_delete: delete the image snapshot ``<vol>-snap<TARGET_SNAPSHOT>`` (detached from
every host first); already gone is fine."""

from __future__ import annotations

from ..entry import DsRequest
from ..imageds import DsAction


def run(request: DsRequest) -> str:
    act = DsAction(request)
    volume = act.image_volume(act.image_id())
    snapshot = act.names.disk_snapshot(volume, act.snapshot_id())
    with act.driver.lock(volume):
        act.driver.backend.delete(snapshot, snapshot=True)
    return ""
