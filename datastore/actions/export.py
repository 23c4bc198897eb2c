"""export (marketplace): the image as a file that OpenNebula's downloader.sh can read, and the
``IMPORT_INFO`` document naming it.

A snapshot ``<vol>-export-<app id>`` of the image volume (a consistent copy even when the
image is in use) is attached read-only to the staging host (EXPORT_BRIDGE_LIST, else
BRIDGE_LIST, else the front-end), converted there with qemu-img into
``<STAGING_DIR>/<vol>-export-<app id>.<format>`` (EXPORT_FILE_FORMAT: qcow2, the default,
or raw), checksummed, then detached and deleted before the action returns: no StorPool
object outlives it. IMPORT_SOURCE is that file's path when the front-end staged it, else
``ssh://<host>:<path>`` (both are forms downloader.sh reads). DISPOSE is YES: the file is a
copy to be removed once the marketplace has it (stock market drivers remove a local
IMPORT_SOURCE themselves; DISPOSE_CMD says how for either form). The staging host needs
free space in STAGING_DIR for the file.
"""

from __future__ import annotations

import os
import re
import shlex

from lxml import etree

from onelib import log
from onelib.errors import DriverError

from .. import images
from ..entry import DsRequest
from ..imageds import DsAction

FORMATS = {"raw": "raw", "qcow2": "qcow2", "qcow": "qcow2"}


def run(request: DsRequest) -> str:
    act = DsAction(request)
    if request.id < 0:
        raise DriverError(f"export: id {request.id} is not a marketplace app id")
    image_id = act.image_id(match_argv=False)
    volume = act.image_volume(image_id)
    snapshot = act.names.export_snapshot(volume, request.id)
    fmt = FORMATS.get(act.setting("EXPORT_FILE_FORMAT", "qcow2").lower(), "")
    if not fmt:
        raise DriverError(f"export: EXPORT_FILE_FORMAT={act.setting('EXPORT_FILE_FORMAT')!r} is not raw or qcow2")
    host_name = act.staging_host(image_id, "EXPORT_BRIDGE_LIST")
    directory = act.staging_dir()
    # a qualified snapshot name (rbd: pool/image@export-N) is one file name too
    target = f"{directory}/{snapshot.replace('/', '%')}.{fmt}"
    timeout = act.seconds("IMPORT_TIMEOUT", 86400)
    tags = act.tags()
    backend = act.driver.backend
    ref = act.driver.host(host_name)
    shell = act.driver.shell(host_name)

    with act.driver.lock(volume):
        current = backend.get(volume)
        if current is None or current.snapshot:
            raise DriverError(f"export: image {image_id} has no volume {volume}")
        backend.delete(snapshot, snapshot=True)      # an interrupted export's leftover
        backend.snapshot(volume, snapshot, tags=tags)
        try:
            device = backend.attach(snapshot, ref, snapshot=True)
            if shell.local:
                os.makedirs(directory, exist_ok=True)
            else:
                shell.run(["mkdir", "-p", "--", directory])
            shell.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, device, target], timeout=timeout)
            if shell.local:
                md5 = images.file_digests(target)["MD5"]
            else:
                md5 = shell.output(["md5sum", "--", target], timeout=timeout).split(" ", 1)[0]
            if not re.fullmatch(r"[0-9a-f]{32}", md5):
                raise DriverError(f"export: no MD5 checksum of {target} on {host_name or 'the front-end'}")
            backend.delete(snapshot, snapshot=True)
        except BaseException:
            with images.removing(target, shell):
                pass
            try:
                backend.delete(snapshot, snapshot=True)
            except DriverError as exc:
                log.error(f"could not delete the export snapshot {snapshot}: {exc} (a re-run or rm deletes it)")
            raise

    remove = ["rm", "-f", "--", target]
    if shell.local:
        source, dispose = target, shlex.join(remove)
    else:
        source, dispose = f"ssh://{host_name}:{target}", shlex.join(shell.command(remove))
    info = etree.Element("IMPORT_INFO")
    for name, value in (("IMPORT_SOURCE", source), ("MD5", md5), ("SIZE", str(images.mb(current.size))),
                        ("FORMAT", fmt), ("DISPOSE", "YES"), ("DISPOSE_CMD", dispose)):
        etree.SubElement(info, name).text = value
    return etree.tostring(info, encoding="unicode")
