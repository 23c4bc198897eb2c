"""PREMIGRATE ``src dst vm_dir vmid sys_dsid [caller]`` (stdin: base64 ``<VM>``): before a
live migration every volume is attached on the destination too, in one call, and the
destination gets the VM directory with its ``disk.N`` links. Calls: find (2) + attach (1)."""

from __future__ import annotations

from ..entry import TmRequest
from ..migrate import Migration, attach_on, copy_dir


def run(req: TmRequest) -> None:
    m = Migration(req)
    if m.src == m.dst:
        return
    if not m.shared:
        copy_dir(m.drv, m.src, m.dst, m.src_dir, m.dst_dir)
    attach_on(m.drv, m.vm, m.vm_id, m.dst, m.dst_dir)
