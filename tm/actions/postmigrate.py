"""POSTMIGRATE ``src dst vm_dir vmid sys_dsid`` (stdin: base64 ``<VM>``): after a live
migration the source lets go of every volume (one call) and, with a non-shared system
datastore, of the VM directory."""

from __future__ import annotations

from ..entry import TmRequest
from ..migrate import Migration, detach_from


def run(req: TmRequest) -> None:
    m = Migration(req)
    if m.src == m.dst:
        return
    # the links go with the directory (ssh), or stay in the directory both hosts share
    detach_from(m.drv, m.vm, m.vm_id, m.src, m.src_dir, links=False)
    if not m.shared:
        m.drv.shell(m.src).run(["rm", "-rf", "--one-file-system", m.src_dir])
