"""monitor (image datastore): the capacity of the datastore's StorPool template
(``<PX>-ds-<ID>``) from one VolumeTemplatesStatus call, whatever the number of volumes:
``USED_MB``, ``TOTAL_MB``, ``FREE_MB`` (used = capacity - free, as addon-storpool)."""

from __future__ import annotations

from onelib.errors import DriverError

from .. import images
from ..entry import DsRequest
from ..imageds import DsAction


def run(request: DsRequest) -> str:
    act = DsAction(request)
    if act.ds_id != request.id:
        raise DriverError(f"monitor: DATASTORE/ID {act.ds_id} differs from the id argument {request.id}")
    cap = act.driver.backend.capacity(act.driver.placement(act.ds_id))
    mib = images.MiB
    return f"USED_MB={cap.used // mib}\nTOTAL_MB={cap.total // mib}\nFREE_MB={cap.free // mib}"
