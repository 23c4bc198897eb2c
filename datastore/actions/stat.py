"""stat: the size in MB (rounded up) an image at IMAGE/PATH needs: for a local file the
virtual size qemu-img reports (a qcow2/VMDK/VHDX expands), for an http(s) URL the virtual
size read from the first MiBs, else the Content-Length. Local paths obey RESTRICTED_DIRS /
SAFE_DIRS as in cp; unsupported or unsafe images (backing files, external extents) fail
here already, before oned creates anything."""

from __future__ import annotations

import os

from onelib import xmldoc

from .. import images
from ..entry import DsRequest
from ..imageds import DsAction


def run(request: DsRequest) -> str:
    act = DsAction(request)
    path = images.check_source(xmldoc.text(act.image, "PATH"))
    if images.is_url(path):
        scratch_dir = act.staging_dir()
        os.makedirs(scratch_dir, exist_ok=True)
        scratch = os.path.join(scratch_dir, f"one-tweaks-stat-{os.getpid()}.probe")
        with images.removing(scratch):
            size = images.url_size(path, scratch, timeout=act.seconds("DOWNLOAD_TIMEOUT", 60))
        return str(images.mb(size))
    images.check_restricted(path, act.ds_attrs.get("RESTRICTED_DIRS", ""), act.ds_attrs.get("SAFE_DIRS", ""))
    path = os.path.realpath(path)
    images.local_file(path)
    return str(images.mb(images.qemu_img_info(path).virtual_size))
