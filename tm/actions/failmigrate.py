"""FAILMIGRATE ``src dst vm_dir vmid sys_dsid`` (stdin: base64 ``<VM>``): a live migration
failed: the destination lets go of what premigrate gave it; the source keeps running."""

from __future__ import annotations

from ..entry import TmRequest
from ..migrate import Migration, detach_from


def run(req: TmRequest) -> None:
    m = Migration(req)
    if m.src == m.dst:
        return
    # the links go with the directory (ssh), or stay in the directory both hosts share
    detach_from(m.drv, m.vm, m.vm_id, m.dst, m.dst_dir, links=False)
    if not m.shared:
        m.drv.shell(m.dst).run(["rm", "-rf", "--one-file-system", m.dst_dir])
