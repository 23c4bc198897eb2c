"""cp: import an image from a local file or an http(s) URL into a new volume.

Prints ``SOURCE FORMAT``: ``<PX>-img-<ID> raw`` (a StorPool volume is always raw; qcow2,
VMDK and VHDX sources are converted by qemu-img on the staging host). The image's MD5 /
SHA1 (IMAGE/TEMPLATE) are checked against the bytes as fetched, before any volume exists.
Compressed files (gzip, bzip2, xz) are decompressed first unless NO_DECOMPRESS is set, as
OpenNebula's downloader.sh does. Data goes through the staging volume (see
``datastore.imageds``); an existing ``<PX>-img-<ID>`` is an error, never overwritten.
"""

from __future__ import annotations

import contextlib
import os

from onelib import xmldoc
from onelib.errors import DriverError
from onelib.hostcmd import Host

from .. import images
from ..entry import DsRequest
from ..imageds import DsAction


def run(request: DsRequest) -> str:
    act = DsAction(request)
    image_id = act.image_id()
    path = images.check_source(xmldoc.text(act.image, "PATH"))
    expected = images.expected_digests(act.image_template())
    final, staging = act.names.image(image_id), act.staging_name(image_id)
    placement = act.driver.placement(act.ds_id)
    host_name = act.staging_host(image_id)
    scratch_dir = act.staging_dir()
    timeout = act.seconds("DOWNLOAD_TIMEOUT", 60)
    tags = act.tags()
    url = images.is_url(path)
    if not url:
        images.check_restricted(path, act.ds_attrs.get("RESTRICTED_DIRS", ""), act.ds_attrs.get("SAFE_DIRS", ""))
        path = os.path.realpath(path)
        images.local_file(path)

    with act.driver.lock(final), contextlib.ExitStack() as scratch:
        act.require_absent(final)
        source = path
        if url:
            os.makedirs(scratch_dir, exist_ok=True)
            source = scratch.enter_context(images.removing(os.path.join(scratch_dir, f"{staging}.download")))
            try:
                with open(source, "wb") as fh:
                    digests = images.download(path, fh, timeout=timeout)
            except OSError as exc:
                raise DriverError(f"cannot write {source}: {exc.strerror}") from None
        elif expected:
            digests = images.file_digests(path)
        if expected:
            images.verify_digests(expected, digests, path)
        kind = "" if act.flag("NO_DECOMPRESS") else images.compression(source)
        if kind:
            os.makedirs(scratch_dir, exist_ok=True)
            unpacked = scratch.enter_context(images.removing(os.path.join(scratch_dir, f"{staging}.unpacked")))
            images.decompress(source, kind, unpacked)
            source = unpacked
        info = images.qemu_img_info(source)
        size = images.mb(info.virtual_size) * images.MiB

        def write(shell: Host, device: str) -> None:
            act.write_image(shell, source, info.format, device, staging)

        act.fill_volume(final=final, size=size, placement=placement, tags=tags, host_name=host_name,
                        staging=staging, write=write)
    return f"{act.names.source(final)} raw"
