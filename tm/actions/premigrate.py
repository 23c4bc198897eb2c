"""PREMIGRATE ``src dst vm_dir vmid sys_dsid [caller]`` (stdin: base64 ``<VM>``): before a
live migration every volume is attached on the destination too, in one call, and the
destination gets the VM directory with its ``disk.N`` links. Calls: find (2) + attach (1).

oned runs FAILMIGRATE only when the migration itself fails, never after a failed
PREMIGRATE, and the next try may pick another host: so a failed premigrate undoes what
it did on the destination (what failmigrate does) before it reports the failure."""

from __future__ import annotations

import contextlib

from datastore.preflight import volume_reasons
from onelib import log, preflight, xmldoc
from onelib.errors import Transient
from onelib.hypervisor import Hypervisor, deploy_id

from ..entry import TmRequest
from ..migrate import Migration, attach_on, copy_dir, detach_from


def run(req: TmRequest) -> None:
    m = Migration(req)
    if m.src == m.dst:
        return
    _preflight(m)
    try:
        if not m.shared:
            copy_dir(m.drv, m.src, m.dst, m.src_dir, m.dst_dir)
        attach_on(m.drv, m.vm, m.vm_id, m.dst, m.dst_dir)
    except BaseException:
        _undo(m)
        raise


def _preflight(m: Migration) -> None:
    """The destination's libvirt checks the running domain before anything moves (see
    ``onelib.preflight``); a source whose libvirt cannot tell (no such domain, not
    reachable) leaves the check to migrate-tweaks."""
    name = xmldoc.text(m.vm, "DEPLOY_ID")
    if not name:
        return
    with Hypervisor(m.drv.config, m.src) as src:
        try:
            dom = src.lookup(deploy_id(name))
        except Transient as exc:
            log.info(f"VM {m.vm_id}: pre-flight skipped: {exc}")
            return
        if dom is None:
            return
        with Hypervisor(m.drv.config, m.dst) as dest:
            preflight.check(dom.xml(), dest, m.vm_id, volume_reasons(m.vm, m.dst, m.drv.oned))


def _undo(m: Migration) -> None:
    """Best effort: the destination lets go of every volume and of its copy of the VM
    directory (never the source's: with a shared system datastore they are one)."""
    with contextlib.suppress(Exception):
        detach_from(m.drv, m.vm, m.vm_id, m.dst, m.dst_dir, links=False)
    if not m.shared:
        with contextlib.suppress(Exception):
            m.drv.shell(m.dst).run(["rm", "-rf", "--one-file-system", m.dst_dir])
