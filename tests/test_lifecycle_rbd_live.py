"""One VM's whole life on the ``rbd`` drivers, on the live Ceph cluster (tests/ceph_env.py),
under real libvirtd + qemu (TCG), through the front-end test double (tests/sim/frontend.py,
NOT oned) and the oned double, with real sshd and the two libvirt hosts of
test_vmm_migrate (``second_host``: node2 has its own libvirtd, host UUID and sshd).

The image and system datastores are rbd (tests/rbd_env.py: pools ``one`` and ``one-sys``).
The front-end double renders the deployment file as oned does for ``DISK_TYPE=RBD`` image
disks (``<disk type='network'>``, ``<source protocol='rbd' name=...>`` with CEPH_HOST's
monitors, ``<auth>`` with CEPH_USER and the libvirt ``ceph`` secret CEPH_SECRET, which the test
defines on both libvirt hosts); the system datastore has no DISK_TYPE=RBD, so oned writes the
volatile disk as the file ``disk.N`` and the shipped volatile-network rule makes it the RBD
image mkimage made. The context ISO is the file ``disk.N`` oned names and the RBD image
``one-sys/one-sys-<VM>-<DISK>`` TM context writes too; the shipped context-network rule makes
the CD-ROM that image, and the guest reads the ISO from it.

One VM, reused across the steps (one TCG boot, then one more after the undeploy):

1. import: the cached Debian guest (tests/guest.py) by DS ``stat`` + ``cp`` -> ``one/one-<IMG>``;
   a persistent raw datablock by DS ``mkfs`` -> ``one/one-<DB>``;
2. deploy with tweaks (T_BLK_QUEUES, T_DISKSERIAL): prolog CLONE (COW clone of ``@snap``, grown
   by 64 MiB), LN (the datablock in place), MKIMAGE (ext4 volatile ``one-sys/one-sys-<VM>-2``),
   CONTEXT, ``deploy-tweaks``; its output is valid for libvirt's schema; qemu opened every
   disk with librbd (QMP ``query-block``), the guest sees every disk with its size, its root
   file system is the image;
3. a disk snapshot while running (SNAP_CREATE_LIVE) of the datablock: ``one/one-<DB>@0``, the
   guest's file systems frozen around it (its fsfreeze hook logs freeze, thaw);
4. a live resize of the volatile disk (TM RESIZE + ``resize_disk-tweaks``): the RBD image and
   the guest's disk grow;
   then a VM snapshot (``snapshot_create-tweaks``): one RBD group snapshot of the VM's
   images (group ``one/one-vm-<VM>``), deleted again (``snapshot_delete-tweaks``);
5. suspend/resume (SAVE/RESTORE through ``save-tweaks``/``restore-tweaks``): while suspended
   the domain is gone, the checkpoint is ``one-sys/one-sys-<VM>-checkpoint`` and no file on
   the host; after the restore the guest runs on (a file in its tmpfs survived) and the
   checkpoint image is gone;
6. live migration node1 -> node2 (tm premigrate, ``migrate-tweaks``, tm postmigrate): the
   domain runs on node2's libvirtd with the same network disks, the guest answers there and
   its tmpfs file is still there; nothing moved in Ceph;
7. poweroff on node2, then SNAP_REVERT of the datablock (the bytes of the snapshot's time
   come back) and SNAP_DELETE;
8. undeploy (EPILOG_UNDEPLOY: the MV lines to the front-end) and resume on node1
   (PROLOG_UNDEPLOY: MV lines back, deploy without prolog): the images never moved, the guest
   boots again and sees the reverted datablock and the volatile disk's file;
9. terminate with CEPH_TRASH=yes (and DELAY_DELETE=1h): the clone and the volatile disk go
   to the RBD trash flattened, the datablock stays (MVDS), the VM directory goes; ``one-tweaks
   trash restore`` registers the clone's bytes as a new image; the image and the restored one
   are deleted (DS ``rm``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from ceph_env import CephCluster, ceph
from guest import GuestImage, guest_check, guest_image, wait_agent
from livevm import dumpxml, libvirtd, qmp, virsh
from lxml import etree
from rbd_env import IMAGE_DS, POOL, SYS_POOL, SYSTEM_DS, RbdCloud, rbd_cloud
from sim import oned as oned_sim
from sim.frontend import Frontend
from storage_env import sshd
from test_vmm_migrate import SecondHost, second_host

FIXTURES = (ceph, rbd_cloud, sshd, libvirtd, second_host, guest_image)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

VM_ID = 7431                       # domain one-7431 (test_lifecycle_installed uses one-7391)
IMAGE, DATABLOCK = 60, 61
MiB = 2**20
VOLATILE_MB, GROWN_MB, DATABLOCK_MB = 32, 48, 16
FE = "one-fe"
VM_UNDEPLOYED = 9


# --- the world: the rbd cloud as the front-end double needs it ------------------------------------


@dataclasses.dataclass
class Host:
    host_id: int | None


class RbdLifeCloud(RbdCloud):
    """RbdCloud with what tests/sim/frontend.py asks of its cloud: ``hosts``, ``ssh`` and a
    ``make_image`` taking the image's state and name."""

    hosts = {"node1": Host(1), "node2": Host(2), FE: Host(None)}

    def ssh(self, host: str, *argv: str, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return self.sshd.run(host, *argv, input=input, timeout=timeout)

    def make_image(self, image_id: int, *, size_mb: int = 16, persistent: bool = False,
                   source: str | None = None, path: str = "", fmt: str = "raw", ds_id: int = IMAGE_DS,
                   template: Mapping[str, object] | None = None, state: int = oned_sim.IMAGE_READY,
                   name: str | None = None) -> etree._Element:
        doc = oned_sim.image_document(
            image_id, name=name or f"image-{image_id}", source=f"{POOL}/one-{image_id}" if source is None else source,
            size_mb=size_mb, ds_id=ds_id, ds_name=oned_sim._text(self.oned.datastore(ds_id), "NAME"),
            persistent=persistent, image_type="DATABLOCK" if persistent else "OS", disk_type="RBD", fmt=fmt,
            path=path, state=state, template=template)
        return self.oned.add_image(doc)


def inherited(cloud: RbdCloud, ds_id: int) -> dict[str, str]:
    """What oned copies from a datastore into its disks (INHERIT_DATASTORE_ATTR)."""
    tpl = cloud.oned.datastore(ds_id).find("TEMPLATE")
    assert tpl is not None
    return {key: tpl.findtext(key, "") for key in ("CEPH_HOST", "CEPH_SECRET", "CEPH_USER", "CEPH_CONF", "POOL_NAME")
            if tpl.findtext(key)}


def make_vm(cloud: RbdLifeCloud, root_mb: int) -> etree._Element:
    """The VM as oned has it once scheduled on node1: disk 0 a clone of IMAGE (vda), disk 1
    the persistent DATABLOCK (vdb), disk 2 an ext4 volatile disk (vdc), context disk 3."""
    image, datablock = cloud.oned.image(IMAGE), cloud.oned.image(DATABLOCK)
    common = {"CLUSTER_ID": 0, "DRIVER": "raw", "TM_MAD": "rbd", "ALLOW_ORPHANS": "mixed", "DEV_PREFIX": "vd"}
    disks: list[dict[str, object]] = [
        {**common, **inherited(cloud, IMAGE_DS), "DISK_ID": 0, "TARGET": "vda", "DISK_TYPE": "RBD", "TYPE": "RBD",
         "CLONE": "YES", "CLONE_TARGET": "SELF", "LN_TARGET": "NONE", "DATASTORE_ID": IMAGE_DS, "IMAGE_ID": IMAGE,
         "SOURCE": image.findtext("SOURCE", ""), "ORIGINAL_SIZE": image.findtext("SIZE", ""), "SIZE": root_mb,
         "FORMAT": "raw", "READONLY": "NO", "SAVE": "NO"},
        {**common, **inherited(cloud, IMAGE_DS), "DISK_ID": 1, "TARGET": "vdb", "DISK_TYPE": "RBD", "TYPE": "RBD",
         "CLONE": "NO", "CLONE_TARGET": "SELF", "LN_TARGET": "NONE", "DATASTORE_ID": IMAGE_DS,
         "IMAGE_ID": DATABLOCK, "SOURCE": datablock.findtext("SOURCE", ""), "ORIGINAL_SIZE": DATABLOCK_MB,
         "SIZE": DATABLOCK_MB, "FORMAT": "raw", "READONLY": "NO", "SAVE": "YES", "PERSISTENT": "YES"},
        # the system datastore has no DISK_TYPE=RBD: oned writes the volatile disk as a file
        {**common, **inherited(cloud, SYSTEM_DS), "DISK_ID": 2, "TARGET": "vdc", "DISK_TYPE": "FILE", "TYPE": "fs",
         "FS": "ext4", "FORMAT": "raw", "SIZE": VOLATILE_MB, "DATASTORE_ID": SYSTEM_DS},
    ]
    doc = oned_sim.vm_document(VM_ID, disks=disks, context={"DISK_ID": 3, "TARGET": "hda"}, host="node1",
                               host_id=1, system_ds=SYSTEM_DS, tm_mad="rbd",
                               user={"T_BLK_QUEUES": "yes", "T_DISKSERIAL": "yes"},
                               template={"MEMORY": 384, "VCPU": 2})
    vm = cloud.oned.add_vm(doc)
    for path in ("GRAPHICS", "FEATURES/IOTHREADS", "FEATURES/VIRTIO_SCSI_QUEUES", "CPU_MODEL", "OS"):
        for el in vm.findall(f"TEMPLATE/{path}"):
            el.getparent().remove(el)  # type: ignore[union-attr]
    return vm


class RbdFrontend(Frontend):
    """The front-end double with oned's RBD branch of LibVirtDriverKVM.cc: a disk whose TYPE
    or DISK_TYPE is RBD is ``<disk type='network'>`` on ``SOURCE`` (``-<VM>-<DISK>`` for a
    clone), one ``<host>`` per CEPH_HOST word (port 6789 when none), ``<auth>`` only when both
    CEPH_USER and CEPH_SECRET are set."""

    def render(self, vm_id: int) -> bytes:
        root = etree.fromstring(super().render(vm_id))
        for disk in self.vm(vm_id).iterfind("TEMPLATE/DISK"):
            if "RBD" not in (disk.findtext("TYPE", "").upper(), disk.findtext("DISK_TYPE", "").upper()):
                continue
            (el,) = root.xpath("devices/disk[target/@dev=$t]", t=disk.findtext("TARGET", ""))
            source = disk.findtext("SOURCE", "")
            name = source or f"{disk.findtext('POOL_NAME') or 'one'}/one-sys"
            if disk.findtext("CLONE") == "YES" or not source:
                name += f"-{vm_id}-{disk.findtext('DISK_ID')}"
            el.set("type", "network")
            src = el.find("source")
            assert src is not None
            src.attrib.clear()
            src.set("protocol", "rbd")
            src.set("name", name)
            for word in disk.findtext("CEPH_HOST", "").split():
                host, _, port = word.partition(":")
                etree.SubElement(src, "host", name=host, port=port or "6789")
            user, secret = disk.findtext("CEPH_USER", ""), disk.findtext("CEPH_SECRET", "")
            if user and secret:
                auth = etree.Element("auth", username=user)
                etree.SubElement(auth, "secret", type="ceph", uuid=secret)
                src.addnext(auth)
        return etree.tostring(root)


@pytest.fixture
def life(rbd_cloud: RbdCloud, second_host: SecondHost, ceph: CephCluster,
         tmp_path: Path) -> Iterator[tuple[RbdLifeCloud, SecondHost]]:
    """The rbd cloud with node2 the second libvirt host (as test_lifecycle_linstor_live's
    ``linstor_hosts``) and a libvirt ``ceph`` secret holding client.admin's key defined on
    both libvirt hosts; both datastores name it as CEPH_SECRET."""
    cloud = RbdLifeCloud(**{f.name: getattr(rbd_cloud, f.name) for f in dataclasses.fields(rbd_cloud)})
    cloud.configure(SSH_COMMAND=shlex.join(["ssh", "-F", str(second_host.ssh_config)]),
                    MIGRATE_URI=f"qemu+ssh://{{host}}/system?command={second_host.ssh_wrapper}",
                    MIGRATE_OPTIONS="--migrateuri tcp://127.0.0.1")
    cloud.sshd = dataclasses.replace(cloud.sshd, ssh_config=second_host.ssh_config)
    secret = str(uuid.uuid4())
    for ds_id in (IMAGE_DS, SYSTEM_DS):
        cloud.oned.datastore(ds_id).find("TEMPLATE/CEPH_SECRET").text = secret  # type: ignore[union-attr]
    xml = tmp_path / "secret.xml"
    xml.write_text(f"<secret ephemeral='no' private='yes'><uuid>{secret}</uuid>"
                   f"<usage type='ceph'><name>one-tweaks-lifecycle {secret}</name></usage></secret>")
    defined: list[Callable[..., subprocess.CompletedProcess[str]]] = []
    try:
        for run in (virsh, second_host.virsh):
            run("secret-define", str(xml))
            defined.append(run)
            run("secret-set-value", secret, "--base64", ceph.admin_key)
        yield cloud, second_host
    finally:
        second_host.destroy_all()
        virsh("destroy", f"one-{VM_ID}", check=False)
        for run in defined:
            run("secret-undefine", secret, check=False)


# --- helpers ----------------------------------------------------------------------------------------


def head(ceph: CephCluster, volume: str, length: int) -> bytes:
    """The first ``length`` bytes of an RBD image (librbd, as client.admin)."""
    import rados  # type: ignore[import-not-found]
    import rbd  # type: ignore[import-not-found]

    pool, _, image = volume.partition("/")
    with rados.Rados(conffile=str(ceph.conf), rados_id="admin") as cluster, \
            cluster.open_ioctx(pool) as ioctx, rbd.Image(ioctx, image, read_only=True) as img:
        return bytes(img.read(0, length))


def rbd_size(ceph: CephCluster, volume: str) -> int:
    info = ceph.rbd_info(volume)
    assert info is not None, f"{volume} does not exist"
    return int(info["size"])


def snaps(ceph: CephCluster, volume: str) -> list[str]:
    return [s["name"] for s in ceph.rbd_snaps(volume)]


def node2_agent(hosts: SecondHost, name: str, command: str, args: Mapping[str, Any] | None = None) -> Any:
    """guest.agent on node2's libvirtd."""
    message: dict[str, Any] = {"execute": command, **({"arguments": dict(args)} if args else {})}
    proc = hosts.virsh("qemu-agent-command", name, "--timeout", "30", json.dumps(message))
    return json.loads(proc.stdout).get("return")


def node2_check(hosts: SecondHost, name: str, argv: Sequence[str], timeout: float = 60) -> str:
    """guest.guest_check on node2's libvirtd."""
    started = node2_agent(hosts, name, "guest-exec", {"path": argv[0], "arg": list(argv[1:]), "capture-output": True})
    pid = started["pid"]
    deadline = time.monotonic() + timeout
    while not (status := node2_agent(hosts, name, "guest-exec-status", {"pid": pid})).get("exited"):
        assert time.monotonic() < deadline, f"{argv} still running on node2 after {timeout:.0f} s"
        time.sleep(0.2)
    out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
    assert status.get("exitcode") == 0, f"on node2, {argv} failed: {status}"
    return out


def sizes(name: str) -> dict[str, tuple[int, str]]:
    out = guest_check(name, ["/bin/lsblk", "-b", "-d", "-J", "-o", "NAME,SIZE,TYPE"])
    return {d["name"]: (int(d["size"]), d["type"]) for d in json.loads(out)["blockdevices"]}


def wait_size(name: str, dev: str, size: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (seen := sizes(name)[dev][0]) != size and time.monotonic() < deadline:
        time.sleep(0.5)
    return seen


def qemu_rbd_images(name: str) -> dict[str, str]:
    """qdev -> ``pool/image`` of every drive qemu opened through its rbd driver."""
    found = {}
    for entry in qmp(name, "query-block"):
        inserted = entry.get("inserted") or {}
        filename = str(inserted.get("file", ""))
        if '"driver": "rbd"' in filename:
            spec = json.loads(filename.removeprefix("json:"))["file"]
            found[entry.get("qdev") or entry.get("device")] = f"{spec['pool']}/{spec['image']}"
    return found


def write_db(run: Callable[[Sequence[str]], str], data: bytes) -> None:
    """The guest writes ``data`` at the start of the raw datablock (vdb), synchronously."""
    run(["/bin/sh", "-c", f"printf %s {shlex.quote(data.decode())} | /bin/dd of=/dev/vdb bs=512 conv=sync,fsync "
                          "oflag=direct 2>/dev/null"])


def trash_cli(cloud: RbdCloud, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tweaks", "trash", "--driver", "rbd", *args], capture_output=True,
                          env=cloud.env, timeout=120, check=False)


# --- the lifecycle -----------------------------------------------------------------------------------


def test_vm_lifecycle_on_rbd(life: tuple[RbdLifeCloud, SecondHost], guest_image: GuestImage,
                             assert_valid: Callable[[bytes], None]) -> None:
    cloud, hosts = life
    ceph = cloud.ceph
    name = f"one-{VM_ID}"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"
    began = time.monotonic()
    fe = RbdFrontend(cloud, paused=False, kvm=False, hostname=FE)

    # -- 1. import: DS stat + cp of the guest; DS mkfs of a raw datablock -------------------------
    cloud.oned.datastore(IMAGE_DS).find("TEMPLATE/SAFE_DIRS").text = (  # type: ignore[union-attr]
        f"{cloud.root.parent} {guest_image.directory}")
    assert fe.image_import(IMAGE, guest_image.rootfs, name="debian-guest") == f"{POOL}/one-{IMAGE}"
    assert rbd_size(ceph, f"{POOL}/one-{IMAGE}") == guest_image.size
    assert head(ceph, f"{POOL}/one-{IMAGE}", 4 * MiB) == guest_image.rootfs.read_bytes()[:4 * MiB]
    cloud.make_image(DATABLOCK, size_mb=DATABLOCK_MB, persistent=True, source="", state=oned_sim.IMAGE_LOCKED)
    source = fe.run_ds("mkfs", cloud.oned.served("image", DATABLOCK), DATABLOCK, IMAGE_DS).strip()
    assert source == f"{POOL}/one-{DATABLOCK}"
    for tag, value in (("SOURCE", source), ("STATE", oned_sim.IMAGE_USED)):
        cloud.oned.image(DATABLOCK).find(tag).text = str(value)  # type: ignore[union-attr]
    assert ceph.rbd_ls(POOL) == sorted([f"one-{DATABLOCK}", f"one-{IMAGE}"])

    root_mb = int(cloud.oned.image(IMAGE).findtext("SIZE", "0")) + 64
    vm = make_vm(cloud, root_mb)
    tpl = vm.find("TEMPLATE")
    assert tpl is not None
    os_el = etree.SubElement(tpl, "OS")
    for key, text in (("KERNEL", str(guest_image.kernel)), ("INITRD", str(guest_image.initrd)),
                      ("KERNEL_CMD", guest_image.cmdline), ("MACHINE", "q35")):
        etree.SubElement(os_el, key).text = etree.CDATA(text)
    clone, db, volatile = f"{POOL}/one-{IMAGE}-{VM_ID}-0", f"{POOL}/one-{DATABLOCK}", f"{SYS_POOL}/one-sys-{VM_ID}-2"
    node1_dir, node2_dir, fe_dir = (cloud.vm_dir(h, VM_ID) for h in ("node1", "node2", FE))
    disks = {"vda": clone, "vdb": db, "vdc": volatile}
    context = f"{SYS_POOL}/one-sys-{VM_ID}-3"

    # -- 2. deploy with the tweaks -----------------------------------------------------------------
    fe.deploy(VM_ID)
    booted = wait_agent(name, timeout=300)
    assert ceph.rbd_ls(POOL) == sorted([f"one-{DATABLOCK}", f"one-{IMAGE}", f"one-{IMAGE}-{VM_ID}-0"])
    assert ceph.rbd_ls(SYS_POOL) == [f"one-sys-{VM_ID}-2", f"one-sys-{VM_ID}-3"], \
        "the volatile disk and the context are RBD images; no checkpoint yet"
    assert snaps(ceph, f"{POOL}/one-{IMAGE}") == ["snap"], "the clone base"
    assert (ceph.rbd_info(clone) or {}).get("parent", {}).get("image") == f"one-{IMAGE}"
    assert rbd_size(ceph, clone) == root_mb * MiB and rbd_size(ceph, volatile) == VOLATILE_MB * MiB
    rendered = etree.fromstring((fe.vms_dir(VM_ID) / "deployment.0").read_bytes())
    assert rendered.xpath("devices/disk[target/@dev='vdc']")[0].get("type") == "file", "oned's volatile disk"
    tweaked = (fe.vms_dir(VM_ID) / "deployment.0-tweaks").read_bytes()
    assert_valid(tweaked)
    live = dumpxml(name)
    secret = cloud.oned.datastore(IMAGE_DS).findtext("TEMPLATE/CEPH_SECRET")
    for dev, volume in disks.items():
        (disk,) = live.xpath("devices/disk[target/@dev=$d]", d=dev)
        assert disk.get("type") == "network" and disk.find("source").get("protocol") == "rbd", dev
        assert disk.find("source").get("name") == volume, dev
        assert [(h.get("name"), h.get("port")) for h in disk.iterfind("source/host")] == [
            ("127.0.0.1", str(ceph.mon_v1))], dev
        assert (disk.find("auth").get("username"), disk.find("auth/secret").get("uuid")) == ("admin", secret), dev
        assert disk.find("serial") is not None and disk.find("driver").get("queues") == "2", dev  # the tweaks
    (ctx,) = live.xpath("devices/disk[target/@dev='hda']")
    assert ctx.get("type") == "network" and ctx.find("source").get("name") == context, "context-network"
    assert sorted(qemu_rbd_images(name).values()) == sorted([*disks.values(), context]), \
        "qemu opened every disk and the context with librbd"
    assert sizes(name) == {"vda": (root_mb * MiB, "disk"), "vdb": (DATABLOCK_MB * MiB, "disk"),
                           "vdc": (VOLATILE_MB * MiB, "disk"), "sr0": (rbd_size(ceph, context), "rom")}
    iso = (node1_dir / "disk.3").read_bytes()
    assert head(ceph, context, len(iso)) == iso, "the context image holds the ISO"
    assert guest_check(name, ["/bin/dd", "if=/dev/sr0", "bs=1", "skip=32769", "count=5", "status=none"]) \
        == "CD001", "the guest reads the ISO from the RBD image"
    assert guest_check(name, ["/bin/cat", "/etc/one-tweaks-guest"]).strip() == guest_image.marker
    guest_check(name, ["/bin/sh", "-c", "mkdir -p /mnt/v && mount /dev/vdc /mnt/v && echo kept > /mnt/v/file "
                                        "&& umount /mnt/v && echo alive > /run/marker"])

    # -- 3. a disk snapshot while running (SNAP_CREATE_LIVE) of the datablock -----------------------
    run1: Callable[[Sequence[str]], str] = lambda argv: guest_check(name, argv)  # noqa: E731
    write_db(run1, b"before the snapshot")
    guest_check(name, ["/bin/sh", "-c", ": > /run/fsfreeze.log"])
    fe.disk_snapshot(VM_ID, 1, 0)
    assert snaps(ceph, db) == ["0"]
    hook = guest_check(name, ["/bin/cat", "/run/fsfreeze.log"]).split()
    assert hook[0::2] == ["freeze", "thaw"], f"GUEST_AGENT=yes: frozen around the snapshot; the hook saw {hook}"
    write_db(run1, b"after the snapshot!")
    assert head(ceph, db, 19) == b"after the snapshot!"

    # -- 4. live resize of the volatile disk -------------------------------------------------------
    fe.resize_disk(VM_ID, 2, GROWN_MB)
    assert rbd_size(ceph, volatile) == GROWN_MB * MiB
    assert wait_size(name, "vdc", GROWN_MB * MiB) == GROWN_MB * MiB, "the guest sees the grown disk"

    # -- 4b. a VM snapshot (one RBD group snapshot of every disk), then its deletion ----------------
    group = f"{POOL}/one-vm-{VM_ID}"
    snap_id, hid = fe.vm_snapshot(VM_ID)
    assert snap_id == 0 and hid.startswith("snap-0-"), hid
    members = ceph.json("rbd", "group", "image", "list", group)
    assert set(disks.values()) <= {f"{m['pool']}/{m['image']}" for m in members}, members
    (group_snap,) = ceph.json("rbd", "group", "snap", "ls", group)
    assert group_snap["snapshot"] == f"onesnap-0-{hid.split('-')[2]}"
    fe.vm_snapshot_delete(VM_ID, snap_id)
    assert ceph.json("rbd", "group", "snap", "ls", group) == []
    assert {volume: snaps(ceph, volume) for volume in disks.values()} == {clone: [], db: ["0"], volatile: []}

    # -- 5. suspend and resume: the checkpoint waits in Ceph --------------------------------------
    fe.suspend(VM_ID)
    assert name not in virsh("list", "--all", "--name").stdout.split()
    assert ceph.rbd_ls(SYS_POOL) == sorted([f"one-sys-{VM_ID}-2", f"one-sys-{VM_ID}-3", f"one-sys-{VM_ID}-checkpoint"])
    assert not (node1_dir / "checkpoint").exists(), "the checkpoint is in Ceph, not on the host"
    fe.restore(VM_ID)
    assert virsh("domstate", name).stdout.strip() == "running"
    wait_agent(name, timeout=60)
    assert guest_check(name, ["/bin/cat", "/run/marker"]).strip() == "alive", "restored, not rebooted"
    assert ceph.rbd_ls(SYS_POOL) == [f"one-sys-{VM_ID}-2", f"one-sys-{VM_ID}-3"], \
        "the checkpoint image went with the restore"
    assert not (node1_dir / "checkpoint").exists()

    # -- 6. live migration node1 -> node2 ------------------------------------------------------------
    before = {pool: ceph.rbd_ls(pool) for pool in (POOL, SYS_POOL)}
    dom_uuid = fe.deploy_id(VM_ID)
    fe.migrate(VM_ID, "node2")
    assert fe.host(VM_ID) == "node2"
    assert virsh("domstate", name, check=False).returncode != 0, "the domain left node1's libvirtd"
    assert hosts.state(name) == "running"
    assert hosts.virsh("domuuid", name).stdout.strip() == dom_uuid
    moved = etree.fromstring(hosts.virsh("dumpxml", name).stdout.encode())
    assert {d.find("target").get("dev"): d.find("source").get("name")
            for d in moved.iterfind("devices/disk[@type='network']")} == {**disks, "hda": context}
    assert not node1_dir.exists() and (node2_dir / "disk.3").is_file()
    assert node2_check(hosts, name, ["/bin/cat", "/run/marker"]).strip() == "alive"
    assert {pool: ceph.rbd_ls(pool) for pool in (POOL, SYS_POOL)} == before, "nothing moved in Ceph"

    # -- 7. poweroff on node2; revert the datablock to its snapshot, delete the snapshot ---------------
    fe.poweroff(VM_ID)
    assert hosts.state(name) is None
    fe.run_line(shlex.join(["SNAP_REVERT", "rbd", cloud.tm_path("node2", VM_ID, 1), "0", str(VM_ID), str(IMAGE_DS)]))
    assert head(ceph, db, 19) == b"before the snapshot"
    fe.run_line(shlex.join(["SNAP_DELETE", "rbd", cloud.tm_path("node2", VM_ID, 1), "0", str(VM_ID), str(IMAGE_DS)]))
    assert snaps(ceph, db) == []

    # -- 8. undeploy (the VM directory to the front-end), resume on node1 -------------------------------
    fe.transfer(VM_ID, "epilog_undeploy", fe.move_lines(VM_ID, "node2", FE))
    fe._set(VM_ID, "STATE", VM_UNDEPLOYED)
    assert not node2_dir.exists() and (fe_dir / "disk.3").is_file()
    assert {pool: ceph.rbd_ls(pool) for pool in (POOL, SYS_POOL)} == before, "the disks stay in Ceph"
    fe.add_history(VM_ID, "node1")
    fe.transfer(VM_ID, "prolog_undeploy", fe.move_lines(VM_ID, FE, "node1"))
    assert not fe_dir.exists() and (node1_dir / "disk.3").is_file()
    fe.deploy(VM_ID, prolog=False)
    wait_agent(name, timeout=300)
    assert guest_check(name, ["/bin/dd", "if=/dev/vdb", "bs=19", "count=1", "status=none"]) == "before the snapshot"
    assert guest_check(name, ["/bin/sh", "-c", "mount /dev/vdc /mnt/v && cat /mnt/v/file && umount /mnt/v"]
                       ).strip() == "kept"
    assert sizes(name)["vdc"] == (GROWN_MB * MiB, "disk")
    virsh("destroy", name)
    clone_head = head(ceph, clone, 2 * MiB)

    # -- 9. terminate with CEPH_TRASH=yes; trash restore; delete the images -------------------------------
    for ds_id in (IMAGE_DS, SYSTEM_DS):
        etree.SubElement(cloud.oned.datastore(ds_id).find("TEMPLATE"), "CEPH_TRASH").text = "yes"  # type: ignore[arg-type]
    for disk in vm.iterfind("TEMPLATE/DISK"):
        etree.SubElement(disk, "CEPH_TRASH").text = "yes"  # inherited by the disks
    cloud.configure(DELAY_DELETE="1h")
    fe.terminate(VM_ID)
    assert ceph.rbd_ls(POOL) == sorted([f"one-{DATABLOCK}", f"one-{IMAGE}"]), "MVDS kept the datablock"
    assert ceph.rbd_ls(SYS_POOL) == []
    assert [t["name"] for t in ceph.rbd_trash(POOL)] == [f"one-{IMAGE}-{VM_ID}-0"]
    assert [t["name"] for t in ceph.rbd_trash(SYS_POOL)] == [f"one-sys-{VM_ID}-2"]
    assert not node1_dir.exists()
    assert snaps(ceph, f"{POOL}/one-{IMAGE}") in ([], ["snap"])
    listed = trash_cli(cloud, "list", "--datastore", str(IMAGE_DS), "--json")
    assert listed.returncode == 0, listed.stderr.decode()
    (item,) = [i for i in json.loads(listed.stdout) if i["volume"] == clone]
    assert item["vm"] == str(VM_ID) and 3000 < item["expires_in_s"] <= 3600
    restored = trash_cli(cloud, "restore", item["snapshot"], "--datastore", str(IMAGE_DS))
    assert restored.returncode == 0, restored.stderr.decode()
    new = [n for n in ceph.rbd_ls(POOL) if n.startswith("one-img-restored-")]
    assert len(new) == 1 and head(ceph, f"{POOL}/{new[0]}", 2 * MiB) == clone_head, "the disk's bytes came back"
    assert [t["name"] for t in ceph.rbd_trash(POOL)] == [], "restored out of the trash"
    (restored_id,) = [i for i, img in cloud.oned.images.items() if img.findtext("SOURCE", "").endswith(new[0])]

    fe.image_delete(IMAGE)
    fe.image_delete(restored_id)
    assert ceph.rbd_ls(POOL) == [f"one-{DATABLOCK}"]
    took = time.monotonic() - began
    print(f"rbd lifecycle: {took:.0f} s (first boot {booted:.0f} s)")
