"""clone: a new image with the content of another (IMAGE/PATH is the original's SOURCE,
in either SOURCE form; the new image may be in another datastore of the same StorPool
cluster). One VolumeCreate ``baseOn``; prints ``<PX>-img-<new ID> raw``."""

from __future__ import annotations

from onelib import xmldoc
from onelib.errors import DriverError

from ..entry import DsRequest
from ..imageds import DsAction


def run(request: DsRequest) -> str:
    act = DsAction(request)
    image_id = act.image_id()
    path = xmldoc.text(act.image, "PATH")
    if not path:
        raise DriverError("clone: IMAGE/PATH (the SOURCE of the image to clone) is missing")
    source = act.source_volume(path, "PATH")
    final = act.names.image(image_id)
    if source == final:
        raise DriverError(f"clone: image {image_id} cannot be cloned onto itself")
    placement = act.driver.placement(act.ds_id)
    tags = act.tags()
    backend = act.driver.backend
    with act.driver.lock(final):
        try:
            backend.clone(source, final, placement=placement, tags=tags, from_snapshot=False)
        except DriverError:
            # one more look only on failure, for a reason an operator can act on
            if backend.get(final) is not None:
                raise DriverError(f"clone: volume {final} already exists; not overwriting it") from None
            if backend.get(source) is None:
                raise DriverError(f"clone: the image to clone has no volume {source} "
                                  f"(in this datastore's {act.driver.driver} storage)") from None
            raise
    return f"{act.names.source(final)} raw"
