"""A VM's life on storpool through an INSTALLED front-end (issue 5): ``one-tweaks install`` into
a remotes directory and copies of OpenNebula's stock oned.conf and vmm_execrc (6.10 and 7.2),
then the front-end double (tests/sim/frontend.py, NOT oned) works like oned on that front-end:
it runs the installed executables themselves (their ``#!`` line is the installer's Python),
``REMOTES/tm/storpool/*`` and ``REMOTES/datastore/storpool/*``, and every VMM local action by
the script the patched oned.conf's kvm VM_MAD ``-l`` list names (the save/restore overrides
included). Nothing from the repository's tm/, datastore/ or vmm/ directories runs.

The scenario: ``one-tweaks doctor`` on the installed front-end is healthy; an image imported by
DS ``stat``/``cp``; deploy with a tweak qemu shows (T_IOTHREADS_OVERRIDE: query-iothreads); a
live disk snapshot; a VM snapshot created, reverted, deleted; suspend/resume through SAVE and
RESTORE (the checkpoint volume exists while suspended); stop/resume (SAVE, the MV lines to
the front-end and back, RESTORE); a live resize (TM RESIZE, then the installed resize_disk
override's blockresize); poweroff/resume; terminate; image
delete; nothing leaks; ``one-tweaks uninstall`` leaves the remotes directory and the
configuration as they were. No guest boots: the domain stays paused, enough for all of this.

Also: the same compact lifecycle on linstor_un (the LINSTOR world of tests/linstor_env.py);
the save/restore overrides running the installed ``tm/storpool/pre*/post*`` (test-only
recording wrappers around them) and failing cleanly when one is missing; and a failing TM
clone on the 7.2 front-end read the way oned 7.x reads stderr.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ONE, ROOT
from linstor_env import DRIVER, LinstorCloud, by_res, lcloud
from linstor_env import FE as LS_FE
from linstor_env import IMAGE_DS as LS_IMAGE_DS
from linstor_env import SYSTEM_DS as LS_SYSTEM_DS
from livevm import libvirtd, qmp, virsh
from scenario import links, read_at, write_at
from sim.frontend import DriverFailed, Frontend, InstalledFrontend
from storage_env import FRONTEND, IMAGE_DS, SYSTEM_DS, Cloud, cloud, sshd

from onelib.install import doctor, template

FIXTURES = (cloud, lcloud, sshd, libvirtd)

VM_IDS = {"6.10": 7391, "7.2": 7392}  # one-7391, one-7392: ids no other test uses
IMAGE, IMAGE_MB, MEMORY_MB = 86, 16, 128
MiB = 2**20
# stand-ins of files OpenNebula itself ships in remotes/ (never run here): install must leave
# them alone and uninstall must leave them as they were
STOCK_REMOTES = {"vmm/kvm/deploy": "#!/bin/bash\n# stock remote deploy\n", "vmm/kvm/save": "#!/bin/bash\n",
                 "tm/ssh/clone": "#!/bin/bash\n", "datastore/fs/cp": "#!/bin/bash\n"}


def one_tweaks() -> list[str]:
    """The operator's ``one-tweaks`` command of this environment."""
    exe = Path(sys.executable).parent / "one-tweaks"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "tweaks"]


def installer_python() -> str:
    """The interpreter ``one-tweaks`` runs with: what the installed executables must use."""
    cmd = one_tweaks()
    if len(cmd) > 1:
        return sys.executable
    first = Path(cmd[0]).read_text().splitlines()[0]
    return first.removeprefix("#!").split()[0]


class Front:
    """A front-end's files in a tmp dir: etc/oned.conf and etc/vmm_execrc (copies of the stock
    ones of ``version``), remotes/ with a few stock scripts' stand-ins."""

    def __init__(self, root: Path, version: str, env: dict[str, str] | None = None) -> None:
        self.root, self.env = root, env
        self.etc, self.remotes = root / "etc", root / "remotes"
        self.etc.mkdir(parents=True)
        for name in ("oned.conf", "vmm_execrc"):
            shutil.copyfile(ONE / "etc" / version / name, self.etc / name)
        self.oned, self.execrc = self.etc / "oned.conf", self.etc / "vmm_execrc"
        for rel, text in STOCK_REMOTES.items():
            path = self.remotes / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o755)

    def run(self, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*one_tweaks(), command, "--remotes", str(self.remotes), "--oned-conf", str(self.oned),
                               "--vmm-execrc", str(self.execrc), *extra], capture_output=True, text=True,
                              env=self.env, cwd=self.root, timeout=300, check=False)

    def install(self) -> InstalledFrontend:
        proc = self.run("install")
        assert proc.returncode == 0, proc.stderr
        return InstalledFrontend(self.remotes, self.oned)

    def local_actions(self) -> dict[str, str]:
        """The kvm VM_MAD -l list as the installer's own parser reads it."""
        (vector,) = template.find(template.parse(self.oned.read_text(encoding="utf-8")), "VM_MAD", NAME="kvm")
        opt = template.find_option(vector.text_of("ARGUMENTS") or "", "-l", "--local")
        return {k.upper(): v or k.lower() for k, v in template.parse_actions(opt.value if opt else None)}


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and directory under ``root``: (sha256 or "dir", mode)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        kind = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode))
    return out


@pytest.mark.parametrize("version", ["6.10", "7.2"])
def test_frontend_reads_the_installed_oned_conf_like_oned(tmp_path: Path, version: str) -> None:
    """Before install the kvm VM_MAD has no local action: every VMM action is remote, which
    the double refuses (no stock remote scripts here); after install it runs exactly what
    the -l list names; a hand-edited -l entry is followed too."""
    front = Front(tmp_path, version)
    stock = InstalledFrontend(front.remotes, front.oned)
    assert (stock.hypervisor, stock.local) == ("kvm", {})
    with pytest.raises(DriverFailed, match="deploy is not a local action of VM_MAD kvm"):
        stock.vmm_script("deploy")

    installed = front.install()
    assert installed.local == front.local_actions()
    assert installed.local["SAVE"] == "save-tweaks" and installed.local["SNAPSHOTCREATE"] == "snapshot_create-tweaks"
    for action, script in installed.local.items():
        path = installed.vmm_script(action.lower())
        assert path == front.remotes / "vmm" / "kvm" / script and os.access(path, os.X_OK), path
    with pytest.raises(DriverFailed, match="reboot is not a local action"):
        installed.vmm_script("reboot")

    # oned's reading: the last -l wins, a bare name is its own script, the action upper-cased
    edited = tmp_path / "edited.conf"
    text = front.oned.read_text()
    assert text.count("-l deploy=deploy-tweaks,save=save-tweaks,") == 1
    edited.write_text(text.replace("-l deploy=deploy-tweaks,save=save-tweaks,",
                                   "-l deploy=deploy-tweaks,Save=tmsave,"))
    assert InstalledFrontend(front.remotes, edited).vmm_script("save") == front.remotes / "vmm/kvm/tmsave"


@pytest.mark.libvirtd
@pytest.mark.parametrize("version", ["6.10", "7.2"])
def test_lifecycle_on_the_installed_frontend(cloud: Cloud, libvirtd: object, tmp_path: Path, version: str) -> None:
    vm_id = VM_IDS[version]
    name = f"one-{vm_id}"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"

    # -- install into a front-end's files; doctor says it is healthy -------------------------------
    front = Front(tmp_path / "front", version, env=cloud.env)
    before = tree(front.root)
    installed = front.install()
    python = installer_python()
    ours = {p for p in front.remotes.rglob("*")
            if p.is_file() and str(p.relative_to(front.remotes)) not in STOCK_REMOTES}
    assert ours and all(p.read_text().splitlines()[0] == f"#!{python}" for p in ours)
    for rel, text in STOCK_REMOTES.items():
        assert (front.remotes / rel).read_text() == text, f"install changed the stock {rel}"
    # every check can pass here: the StorPool API is the simulator (ONE_TWEAKS_CONF of the
    # cloud), oned the double (no linstor_un datastores), libvirt's schema is installed
    calls = len(cloud.sim.calls)
    proc = front.run("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"one-tweaks doctor: healthy ({', '.join(doctor.CHECKS)} checked)"]
    assert [c for c, _ in cloud.sim.calls[calls:]] == ["ServicesList"], "doctor asked the StorPool API"

    fe = Frontend(cloud, version=version, installed=installed)
    local = front.local_actions()

    # -- the image: DS stat + cp -------------------------------------------------------------------
    files = tmp_path / "img"
    files.mkdir()
    qcow2 = files / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), f"{IMAGE_MB}M"], check=True)
    cloud.oned.datastore(IMAGE_DS).find("TEMPLATE/SAFE_DIRS").text = f"/var/tmp {files}"  # type: ignore[union-attr]
    assert fe.image_import(IMAGE, qcow2) == f"one-img-{IMAGE}"

    cloud.make_vm(vm_id, disks=[{"image": IMAGE, "size": IMAGE_MB}, {"volatile": "fs", "size": 8, "fs": None}],
                  user={"T_IOTHREADS_OVERRIDE": "3"}, template={"MEMORY": MEMORY_MB, "VCPU": 4})
    vm = cloud.oned.vm(vm_id)
    features = vm.find("TEMPLATE/FEATURES")
    assert features is not None
    for tag in ("GUEST_AGENT", "IOTHREADS"):  # no agent to freeze; oned's own iothreads overridden
        for el in features.findall(tag):
            features.remove(el)
    disk0 = cloud.disk_path("node1", vm_id, 0)
    checkpoint = f"one-sys-{vm_id}-rawcheckpoint"
    try:
        # -- deploy with a tweak qemu shows ----------------------------------------------------------
        uuid = fe.deploy(vm_id)
        assert uuid == virsh("domuuid", name).stdout.strip()
        assert len(qmp(name, "query-iothreads")) == 3

        # -- live disk snapshot; VM snapshot create, revert, delete ---------------------------------
        fe.disk_snapshot(vm_id, 0, 0)
        assert f"one-img-{IMAGE}-{vm_id}-0-snap0" in cloud.sim.inventory()["snapshots"]
        write_at(disk0, b"before the snapshot")
        snap_id, _ = fe.vm_snapshot(vm_id)
        write_at(disk0, b"AFTER  the snapshot")
        fe.vm_snapshot_revert(vm_id, snap_id)
        assert read_at(disk0, 19) == b"before the snapshot"
        assert virsh("domuuid", name).stdout.strip() == uuid
        fe.vm_snapshot_delete(vm_id, snap_id)
        assert not [s for s in cloud.sim.inventory()["snapshots"] if "-ONESNAP-" in s]

        # -- suspend/resume: SAVE and RESTORE through the scripts the -l list names ----------------
        fe.suspend(vm_id)
        assert name not in virsh("list", "--all", "--name").stdout.split()
        assert checkpoint in cloud.sim.inventory()["volumes"], "the checkpoint is a volume"
        assert fe.resume(vm_id) == uuid == virsh("domuuid", name).stdout.strip()
        assert checkpoint not in cloud.sim.inventory()["volumes"]
        assert read_at(disk0, 19) == b"before the snapshot"

        # -- stop/resume: SAVE, the MV lines to the front-end and back, RESTORE ----------------------
        stop = fe.stop(vm_id)
        assert stop.read_text().splitlines()[-1] == (
            f"MV storpool {cloud.tm_path('node1', vm_id)} {cloud.tm_path(FRONTEND, vm_id)} {vm_id} {SYSTEM_DS}")
        assert name not in virsh("list", "--all", "--name").stdout.split()
        inv = cloud.sim.inventory()
        assert checkpoint in inv["volumes"] and inv["attachments"] == [], "stopped: nothing attached anywhere"
        assert not cloud.vm_dir("node1", vm_id).exists()
        assert fe.resume(vm_id) == uuid == virsh("domuuid", name).stdout.strip()
        assert checkpoint not in cloud.sim.inventory()["volumes"]
        assert not cloud.vm_dir(FRONTEND, vm_id).exists()
        assert read_at(disk0, 19) == b"before the snapshot"

        # -- live resize: the TM RESIZE line, then resize_disk (blockresize) in the running domain --
        target = vm.findtext("TEMPLATE/DISK[DISK_ID='0']/TARGET", "")
        fe.resize_disk(vm_id, 0, 2 * IMAGE_MB)
        assert cloud.sim.inventory()["volumes"][f"one-img-{IMAGE}-{vm_id}-0"]["size"] == 2 * IMAGE_MB * MiB
        capacity = virsh("domblkinfo", name, target).stdout
        assert f"Capacity:       {2 * IMAGE_MB * MiB}" in capacity, capacity

        # -- poweroff/resume -------------------------------------------------------------------------
        fe.poweroff(vm_id)
        assert name not in virsh("list", "--all", "--name").stdout.split()
        assert fe.resume(vm_id) == virsh("domuuid", name).stdout.strip()
        assert len(qmp(name, "query-iothreads")) == 3
    finally:
        virsh("destroy", name, check=False)

    # -- terminate, delete the image -----------------------------------------------------------------
    fe.terminate(vm_id)
    fe.image_delete(IMAGE)

    # -- what ran: only installed executables, each by itself ---------------------------------------
    assert fe.executed and all(p.is_relative_to(front.remotes) for p in fe.executed), fe.executed
    assert all(cmd[0] == str(p) for cmd, p in zip(fe.commands, fe.executed, strict=True))
    for top in ("tm", "datastore", "vmm"):
        assert not [p for p in fe.executed if p.resolve().is_relative_to(ROOT / top)]
    ran = {str(p.relative_to(front.remotes)) for p in fe.executed}
    vmm = {f"vmm/kvm/{local[a]}" for a in ("DEPLOY", "SNAPSHOTCREATE", "SNAPSHOTREVERT", "SNAPSHOTDELETE", "SAVE",
                                           "RESTORE", "RESIZE_DISK")}
    assert vmm == {"vmm/kvm/deploy-tweaks", "vmm/kvm/snapshot_create-tweaks", "vmm/kvm/snapshot_revert-tweaks",
                   "vmm/kvm/snapshot_delete-tweaks", "vmm/kvm/save-tweaks", "vmm/kvm/restore-tweaks",
                   "vmm/kvm/resize_disk-tweaks"}
    assert vmm | {"datastore/storpool/stat", "datastore/storpool/cp", "datastore/storpool/rm", "tm/storpool/clone",
                  "tm/storpool/mkimage", "tm/storpool/context", "tm/storpool/snap_create_live",
                  "tm/storpool/mv", "tm/storpool/resize", "tm/storpool/delete"} == ran
    assert all(p.read_text().splitlines()[0] == f"#!{python}" and os.access(p, os.X_OK) for p in fe.executed)

    # -- nothing leaks -------------------------------------------------------------------------------
    inv = cloud.sim.inventory()
    assert inv["volumes"] == {}
    assert all("-DELETED-" in s for s in inv["snapshots"]), inv["snapshots"]  # the DELAY_DELETE trash
    assert inv["attachments"] == [] and inv["loops"] == []
    assert links(cloud) == []
    for host in cloud.hosts:
        assert not cloud.vm_dir(host, vm_id).exists()
    assert name not in virsh("list", "--all", "--name").stdout.split()

    # -- uninstall: the remotes directory and the configuration as before ---------------------------
    proc = front.run("uninstall")
    assert proc.returncode == 0, proc.stderr
    after = tree(front.root)
    backups = {rel: after.pop(rel) for rel in list(after) if rel.endswith(".one-tweaks.bak")}
    assert after == before
    assert sorted(backups) == ["etc/oned.conf.one-tweaks.bak", "etc/vmm_execrc.one-tweaks.bak"]
    for rel, (digest, _) in backups.items():
        assert digest == before[rel.removesuffix(".one-tweaks.bak")][0], "the backup is the original"


# --- linstor_un on the installed front-end --------------------------------------------------------

LINSTOR_VM_IDS = {"6.10": 7395, "7.2": 7396}  # one-7395, one-7396: ids no other test uses
LINSTOR_IMAGE = 87


@pytest.mark.libvirtd
@pytest.mark.parametrize("version", ["6.10", "7.2"])
def test_linstor_un_lifecycle_on_the_installed_frontend(lcloud: LinstorCloud, libvirtd: object, tmp_path: Path,
                                                        version: str) -> None:
    """The compact lifecycle on linstor_un (tests/linstor_env.py: the LINSTOR controller
    simulator, NOT LINSTOR): install writes ``tm/linstor_un/*`` and ``datastore/linstor_un/*``;
    the image imported by the installed DS stat/cp, deploy with a tweak qemu shows, a live disk
    snapshot, a VM snapshot created/reverted/deleted, suspend/resume through the save/restore
    scripts the patched -l list names (the checkpoint resource exists while suspended),
    stop/resume (the installed mv moves every resource to the front-end and back), a live
    resize, terminate and image delete; nothing leaks and only installed executables ran."""
    cloud = lcloud
    vm_id = LINSTOR_VM_IDS[version]
    name = f"one-{vm_id}"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"
    front = Front(tmp_path / "front", version, env=cloud.env)
    installed = front.install()
    for rel in ("tm/linstor_un/clone", "tm/linstor_un/presave", "datastore/linstor_un/cp"):
        assert os.access(front.remotes / rel, os.X_OK), f"install did not write {rel}"
    proc = front.run("doctor")  # a LINSTOR-only front-end: no StorPool API to configure
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"one-tweaks doctor: healthy ({', '.join(doctor.CHECKS)} checked)"]
    fe = Frontend(cloud, version=version, installed=installed, hostname=LS_FE)
    local = front.local_actions()
    hooks_log = tmp_path / "hooks.log"
    tm_dir = record_hooks(front.remotes / "tm" / DRIVER, hooks_log)

    qcow2 = tmp_path / "img" / "disk.qcow2"
    qcow2.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), f"{IMAGE_MB}M"], check=True)
    assert fe.image_import(LINSTOR_IMAGE, qcow2, ds_id=LS_IMAGE_DS) == by_res(f"one-image-{LINSTOR_IMAGE}")
    cloud.make_vm(vm_id, disks=[{"image": LINSTOR_IMAGE, "size": IMAGE_MB}, {"volatile": "fs", "size": 8, "fs": None}],
                  user={"T_IOTHREADS_OVERRIDE": "3"}, template={"MEMORY": MEMORY_MB, "VCPU": 4})
    features = cloud.oned.vm(vm_id).find("TEMPLATE/FEATURES")
    assert features is not None
    for tag in ("GUEST_AGENT", "IOTHREADS"):  # no agent to freeze; oned's own iothreads overridden
        for el in features.findall(tag):
            features.remove(el)
    disk0 = cloud.disk_path("node1", vm_id, 0)
    checkpoint = f"one-vm-{vm_id}-checkpoint"

    def vm_snaps() -> list[str]:
        return [s for rd in cloud.inv().values() for s in rd["snapshots"] if s.startswith("vmsnapshot-")]

    try:
        uuid = fe.deploy(vm_id)
        assert uuid == virsh("domuuid", name).stdout.strip()
        assert len(qmp(name, "query-iothreads")) == 3
        assert cloud.placed(f"one-vm-{vm_id}-disk-0")["node1"] is True, "diskless on the host"

        fe.disk_snapshot(vm_id, 0, 0)
        assert cloud.snaps(f"one-vm-{vm_id}-disk-0") == ["snapshot-0"]
        write_at(disk0, b"before the snapshot")
        snap_id, _ = fe.vm_snapshot(vm_id)
        assert vm_snaps()
        write_at(disk0, b"AFTER  the snapshot")
        fe.vm_snapshot_revert(vm_id, snap_id)
        assert read_at(disk0, 19) == b"before the snapshot"
        assert virsh("domuuid", name).stdout.strip() == uuid
        fe.vm_snapshot_delete(vm_id, snap_id)
        assert vm_snaps() == []

        fe.suspend(vm_id)
        assert name not in virsh("list", "--all", "--name").stdout.split()
        assert checkpoint in cloud.inv(), "the checkpoint is a resource"
        assert fe.resume(vm_id) == uuid == virsh("domuuid", name).stdout.strip()
        assert checkpoint not in cloud.inv()
        assert read_at(disk0, 19) == b"before the snapshot"
        assert [line.split()[0] for line in hooks_log.read_text().splitlines()] == [
            str(tm_dir / hook) for hook in HOOKS], "the overrides ran the installed tm/linstor_un hooks"

        # -- stop/resume: SAVE, every resource to the front-end and back by the installed mv -----------
        stop = fe.stop(vm_id)
        assert stop.read_text().splitlines()[-1] == (
            f"MV linstor_un {cloud.tm_path('node1', vm_id)} {cloud.tm_path(LS_FE, vm_id)} {vm_id} {LS_SYSTEM_DS}")
        assert name not in virsh("list", "--all", "--name").stdout.split()
        assert checkpoint in cloud.inv()
        assert not any("node1" in cloud.placed(res) for res in cloud.inv()), "nothing stays on node1"
        assert fe.resume(vm_id) == uuid == virsh("domuuid", name).stdout.strip()
        assert checkpoint not in cloud.inv() and not cloud.vm_dir(LS_FE, vm_id).exists()
        assert not any(LS_FE in cloud.placed(res) for res in cloud.inv()), "nothing stays on the front-end"
        assert read_at(disk0, 19) == b"before the snapshot"

        # -- live resize: the installed TM resize, then resize_disk's blockresize ------------------------
        target = cloud.oned.vm(vm_id).findtext("TEMPLATE/DISK[DISK_ID='0']/TARGET", "")
        fe.resize_disk(vm_id, 0, 2 * IMAGE_MB)
        capacity = virsh("domblkinfo", name, target).stdout
        assert f"Capacity:       {2 * IMAGE_MB * MiB}" in capacity, capacity
    finally:
        virsh("destroy", name, check=False)

    fe.terminate(vm_id)
    fe.image_delete(LINSTOR_IMAGE)

    assert fe.executed and all(p.is_relative_to(front.remotes) for p in fe.executed), fe.executed
    assert all(cmd[0] == str(p) for cmd, p in zip(fe.commands, fe.executed, strict=True))
    ran = {str(p.relative_to(front.remotes)) for p in fe.executed}
    vmm = {f"vmm/kvm/{local[a]}" for a in ("DEPLOY", "SNAPSHOTCREATE", "SNAPSHOTREVERT", "SNAPSHOTDELETE", "SAVE",
                                           "RESTORE", "RESIZE_DISK")}
    assert vmm | {"datastore/linstor_un/stat", "datastore/linstor_un/cp", "datastore/linstor_un/rm",
                  "tm/linstor_un/clone", "tm/linstor_un/mkimage", "tm/linstor_un/context",
                  "tm/linstor_un/snap_create_live", "tm/linstor_un/mv", "tm/linstor_un/resize",
                  "tm/linstor_un/delete"} == ran

    inv = cloud.sim.inventory()
    assert inv["resource_definitions"] == {}
    assert inv["loops"] == []
    assert links(cloud) == []
    for host in cloud.hosts:
        assert not cloud.vm_dir(host, vm_id).exists()
    assert name not in virsh("list", "--all", "--name").stdout.split()


# --- the checkpoint hooks the save/restore overrides run: the installed ones ------------------------

HOOKS_VM, FAILING_VM = 7397, 7398  # one-7397, one-7398: ids no other test uses
HOOKS = ("presave", "postsave", "prerestore", "postrestore")
# A test-only wrapper (NOT something install writes): records how it was called, then execs
# the installed script, moved aside to <name>.installed in the same directory (tm/entry.py
# takes the action from the name up to the first dot, so it still acts as <name>).
RECORDER = """#!/bin/bash
printf '%s %s\\n' "$0" "$*" >> {log}
exec "$0.installed" "$@"
"""


def record_hooks(tm_dir: Path, log: Path) -> Path:
    """Put RECORDER in front of each installed checkpoint hook of ``tm_dir``."""
    for hook in HOOKS:
        (tm_dir / hook).rename(tm_dir / f"{hook}.installed")
        (tm_dir / hook).write_text(RECORDER.format(log=shlex.quote(str(log))))
        (tm_dir / hook).chmod(0o755)
    return tm_dir


def paused_vm(cloud: Cloud, fe: Frontend, vm_id: int, image: int, files: Path) -> None:
    """An imported image and a VM using it (no guest: the domain stays paused)."""
    files.mkdir()
    qcow2 = files / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), f"{IMAGE_MB}M"], check=True)
    cloud.oned.datastore(IMAGE_DS).find("TEMPLATE/SAFE_DIRS").text = f"/var/tmp {files}"  # type: ignore[union-attr]
    fe.image_import(image, qcow2)
    cloud.make_vm(vm_id, disks=[{"image": image, "size": IMAGE_MB}], template={"MEMORY": MEMORY_MB, "VCPU": 1})


@pytest.mark.libvirtd
def test_save_restore_run_the_installed_tm_hooks(cloud: Cloud, libvirtd: object, tmp_path: Path) -> None:
    """The save/restore overrides find tm/<driver>/pre*/post* next to themselves: on an
    installed front-end these are REMOTES/tm/storpool/*, each run once with the override's
    argv. With the installed presave missing, save fails before doing anything: one stderr
    line naming the missing script, the domain still there, no checkpoint volume or file."""
    vm_id, name = HOOKS_VM, f"one-{HOOKS_VM}"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"
    front = Front(tmp_path / "front", "7.2", env=cloud.env)
    fe = Frontend(cloud, version="7.2", installed=front.install())
    log = tmp_path / "hooks.log"
    tm_dir = record_hooks(front.remotes / "tm" / "storpool", log)
    paused_vm(cloud, fe, vm_id, 88, tmp_path / "img")
    checkpoint = f"one-sys-{vm_id}-rawcheckpoint"
    try:
        uuid = fe.deploy(vm_id)
        host, ckpt_file = fe.host(vm_id), fe.checkpoint_file(vm_id)
        fe.suspend(vm_id)
        assert checkpoint in cloud.sim.inventory()["volumes"]
        assert fe.resume(vm_id) == uuid == virsh("domuuid", name).stdout.strip()
        save_argv = f"{uuid} {ckpt_file} {host} {vm_id} {host}"
        restore_argv = f"{ckpt_file} {host} {uuid} {vm_id} {host}"
        assert log.read_text().splitlines() == [
            f"{tm_dir}/presave {save_argv}", f"{tm_dir}/postsave {save_argv}",
            f"{tm_dir}/prerestore {restore_argv}", f"{tm_dir}/postrestore {restore_argv}"]
        assert checkpoint not in cloud.sim.inventory()["volumes"]

        # -- the installed presave is missing: save fails at once, nothing is done ------------------
        (tm_dir / "presave").unlink()
        calls = len(cloud.sim.calls)
        with pytest.raises(DriverFailed) as failed:
            fe.suspend(vm_id)
        err = failed.value.stderr.decode()
        assert failed.value.returncode == 1 and "Traceback" not in err
        assert err.splitlines() == [f"tm/storpool/presave is not installed (no executable {tm_dir}/presave): "
                                    "run one-tweaks install"], err
        assert virsh("domuuid", name).stdout.strip() == uuid, "the domain was not touched"
        assert virsh("domstate", name).stdout.strip() == "paused"
        assert cloud.sim.calls[calls:] == [], "no StorPool call"
        assert checkpoint not in cloud.sim.inventory()["volumes"]
        assert not os.path.lexists(ckpt_file), "no checkpoint file or link"
        assert len(log.read_text().splitlines()) == 4, "no other hook ran"
    finally:
        virsh("destroy", name, check=False)
    fe.terminate(vm_id)
    fe.image_delete(88)
    inv = cloud.sim.inventory()
    assert inv["volumes"] == {} and inv["attachments"] == [] and links(cloud) == []


# --- OpenNebula 7.x: what oned makes of a failing driver's stderr -----------------------------------

# 7.0+ (DriverExecHelper.rb): stderr lines matching this are VM-log lines, the others joined
# are the failure reason (a failing driver exits non-zero; OpenNebula's driver documentation)
LOG_LINE = re.compile(r"^(ERROR|INFO|WARN|DEBUG):\s+(\d+)?\s*(.*)$")


@pytest.mark.libvirtd
def test_a_failing_clone_gives_oned_7_one_reason_line(cloud: Cloud, libvirtd: object, tmp_path: Path) -> None:
    """Deploy on the 7.2 front-end whose prolog CLONE cannot make the volume (the StorPool
    simulator refuses VolumeCreate): the installed tm/storpool/clone exits non-zero with one
    stderr line that 7.x keeps as the failure reason (not a log line), no traceback; no volume,
    link or domain is left, and the next deploy works."""
    vm_id, name = FAILING_VM, f"one-{FAILING_VM}"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"
    front = Front(tmp_path / "front", "7.2", env=cloud.env)
    fe = Frontend(cloud, version="7.2", installed=front.install())
    paused_vm(cloud, fe, vm_id, 89, tmp_path / "img")
    clone = f"one-img-89-{vm_id}-0"
    cloud.sim.fail("VolumeCreate", descr="no space left in the placement group")
    with pytest.raises(DriverFailed) as failed:
        fe.deploy(vm_id)
    assert fe.executed[-1] == front.remotes / "tm" / "storpool" / "clone"
    err = failed.value.stderr.decode()
    assert failed.value.returncode not in (0, None) and "Traceback" not in err
    reason = [line for line in err.splitlines() if not LOG_LINE.match(line)]
    assert len(reason) == 1 and "no space left in the placement group" in reason[0], err
    assert reason[0].strip() == reason[0] and len(reason[0]) < 300
    assert clone not in cloud.sim.inventory()["volumes"]
    assert cloud.sim.inventory()["attachments"] == [] and links(cloud) == []
    assert name not in virsh("list", "--all", "--name").stdout.split()
    try:
        fe.deploy(vm_id)  # the fault was one call: the prolog runs again from the start
        assert clone in cloud.sim.inventory()["volumes"]
    finally:
        virsh("destroy", name, check=False)
    fe.terminate(vm_id)
    fe.image_delete(89)
    inv = cloud.sim.inventory()
    assert inv["volumes"] == {} and inv["attachments"] == [] and links(cloud) == []
