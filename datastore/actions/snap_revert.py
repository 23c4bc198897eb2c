"""snap_revert: the image volume takes the content of ``<vol>-snap<TARGET_SNAPSHOT>`` again
(one VolumeRevert; the image's other snapshots stay)."""

from __future__ import annotations

from onelib.errors import DriverError, NotFound

from ..entry import DsRequest
from ..imageds import DsAction


def run(request: DsRequest) -> str:
    act = DsAction(request)
    volume = act.image_volume(act.image_id())
    snapshot = act.names.disk_snapshot(volume, act.snapshot_id())
    with act.driver.lock(volume):
        try:
            act.driver.backend.revert(volume, snapshot)
        except NotFound:
            raise DriverError(f"snap_revert: {volume} or its snapshot {snapshot} does not exist") from None
    return ""
