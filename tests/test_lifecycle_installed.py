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
RESTORE (the checkpoint volume exists while suspended); poweroff/resume; terminate; image
delete; nothing leaks; ``one-tweaks uninstall`` leaves the remotes directory and the
configuration as they were. No guest boots: the domain stays paused, enough for all of this.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ONE, ROOT
from livevm import libvirtd, qmp, virsh
from scenario import links, read_at, write_at
from sim.frontend import DriverFailed, Frontend, InstalledFrontend
from storage_env import IMAGE_DS, Cloud, cloud, sshd

from onelib.install import doctor, template

FIXTURES = (cloud, sshd, libvirtd)

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
                                           "RESTORE")}
    assert vmm == {"vmm/kvm/deploy-tweaks", "vmm/kvm/snapshot_create-tweaks", "vmm/kvm/snapshot_revert-tweaks",
                   "vmm/kvm/snapshot_delete-tweaks", "vmm/kvm/save-tweaks", "vmm/kvm/restore-tweaks"}
    assert vmm | {"datastore/storpool/stat", "datastore/storpool/cp", "datastore/storpool/rm", "tm/storpool/clone",
                  "tm/storpool/mkimage", "tm/storpool/context", "tm/storpool/snap_create_live",
                  "tm/storpool/delete"} == ran
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
