"""Live migration of a ``linstor_un`` VM through the front-end test double (tests/sim/frontend.py,
NOT oned), in the LINSTOR world of tests/linstor_env.py (the controller simulator, NOT LINSTOR:
one loop device per volume that every node holding the resource sees through its own
``by-res`` link), with real sshd, libvirtd and qemu.

node2 is test_vmm_migrate's ``second_host`` (a mount namespace with its own libvirtd, host
UUID and sshd), combined with the LINSTOR world exactly as tests/test_lifecycle_live.py
combines it with the StorPool one: the drivers reach node2 through SSH_COMMAND (node2 = node2's
sshd) and the test's own ssh (``cloud.ssh``, the Frontend's ``virsh destroy``) uses the same
client config. LinstorCloud needed no change for that: its hosts are directories of this
machine's file system reached through the test sshd, which the second host's sshd sees too.

The VM: a clone of an image (``one-vm-<VM>-disk-0``), a persistent datablock that has a
diskful replica on node1 itself (LINSTOR's local replica; the other one on stor1), a volatile
disk and the context ISO, deployed running on node1 (diskless resources there, except the
datablock). ``Frontend.migrate`` runs oned's flow (tm premigrate, ``migrate-tweaks``, tm
postmigrate; tm failmigrate when the override fails); the state of the resources while the
override runs is recorded by wrapping ``Frontend.vmm``, i.e. at the moment oned would run
``virsh migrate``:

- a migration that fails (a destination URI whose libvirtd socket does not exist): during it
  every resource allows two primaries and node2 has a diskless resource; failmigrate takes
  both back (no diskless resource, no link on node2, the property gone), the VM keeps running
  on node1 with a new history record there;
- the real move: the same during it; afterwards the domain runs on node2's libvirtd with the
  same UUID and node2's paths, node1's diskless resources are gone while its diskful replica
  of the datablock stays (as do stor1/stor2's), node2 holds the resources diskless, the
  property is removed, and the bytes written through node1's ``disk.1`` are read back
  through node2's;
- terminate on node2 (cancel there, the epilog with node2's paths) leaves only the two images
  with their replicas: no VM resource, no diskless attachment, no loop device or link of the
  VM, no domain on either libvirtd.
"""

from __future__ import annotations

import dataclasses
import shlex
import uuid
from collections.abc import Iterator
from typing import Any

import linstor
import pytest
from linstor_env import FE, SYSTEM_DS, TWO_PRIMARIES, LinstorCloud, lcloud, read, write
from livevm import libvirtd, virsh
from lxml import etree
from sim.frontend import DriverFailed, Frontend
from storage_env import sshd
from test_vmm_migrate import ONE_NS, SecondHost, migrations, second_host

FIXTURES = (lcloud, sshd, libvirtd, second_host)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

VM_ID = 7385                       # domain one-7385: no other test uses it
IMAGE, DATABLOCK = 84, 85
MiB = 2**20


@pytest.fixture
def linstor_hosts(lcloud: LinstorCloud, second_host: SecondHost) -> Iterator[SecondHost]:
    """test_vmm_migrate's ``hosts`` for the LINSTOR world: node2 is the second libvirt host."""
    lcloud.configure(SSH_COMMAND=shlex.join(["ssh", "-F", str(second_host.ssh_config)]),
                     MIGRATE_URI=f"qemu+ssh://{{host}}/system?command={second_host.ssh_wrapper}",
                     MIGRATE_OPTIONS="--migrateuri tcp://127.0.0.1")
    lcloud.sshd = dataclasses.replace(lcloud.sshd, ssh_config=second_host.ssh_config)
    yield second_host
    second_host.destroy_all()


def history(cloud: LinstorCloud, vm_id: int) -> list[tuple[str, str]]:
    return [(h.findtext("SEQ", ""), h.findtext("HOSTNAME", ""))
            for h in cloud.oned.vm(vm_id).iterfind("HISTORY_RECORDS/HISTORY")]


def state(cloud: LinstorCloud, resources: dict[int, str]) -> dict[str, Any]:
    """Per resource: node -> diskless?, the allow-two-primaries property, node2's disk.N link."""
    return {res: (cloud.placed(res), cloud.props(res).get(TWO_PRIMARIES), cloud.link("node2", VM_ID, n))
            for n, res in resources.items()}


def links(cloud: LinstorCloud) -> list[str]:
    out: list[str] = []
    for host in cloud.hosts:
        for top in (cloud.ds_location(host), cloud.device_dir(host)):
            out += [str(p) for p in top.rglob("*") if p.is_symlink()]
    return sorted(out)


def test_live_migration_of_a_linstor_vm_node1_to_node2(lcloud: LinstorCloud, linstor_hosts: SecondHost) -> None:
    cloud, hosts = lcloud, linstor_hosts
    name = f"one-{VM_ID}"
    assert virsh("domstate", name, check=False).returncode != 0, f"domain {name} exists already"
    assert hosts.state(name) is None

    # -- images: one on stor1+stor2; the datablock on stor1 and node1 itself (a local replica) ----
    image_data = b"image eighty-four " * 100
    cloud.make_image(IMAGE, size_mb=16)
    cloud.make_volume(f"one-image-{IMAGE}", 16, data=image_data, tags={"virt": "one"})
    cloud.make_image(DATABLOCK, size_mb=16, persistent=True)
    cloud.sim.add_pool("node1", "local")
    datablock = f"one-image-{DATABLOCK}"
    with cloud.lin() as lin:
        for replies in (lin.resource_dfn_create(datablock), lin.resource_dfn_modify(datablock, {"Aux/one/virt": "one"}),
                        lin.volume_dfn_create(datablock, 16 * 1024),
                        lin.resource_create([linstor.ResourceData("stor1", datablock, storage_pool="thin"),
                                             linstor.ResourceData("node1", datablock, storage_pool="local")])):
            assert not any(r.is_error() for r in replies), replies
    replicas = {datablock: {"stor1": False, "node1": False}, f"one-image-{IMAGE}": {"stor1": False, "stor2": False}}

    cloud.make_vm(VM_ID, disks=[{"image": IMAGE, "size": 16}, {"image": DATABLOCK, "persistent": True, "size": 16},
                                {"volatile": "fs", "size": 8, "fs": None}],
                  template={"MEMORY": 128, "VCPU": 1})
    vm = cloud.oned.vm(VM_ID)
    for path in ("TEMPLATE/GRAPHICS", "TEMPLATE/FEATURES/GUEST_AGENT"):  # no VNC: both qemus share its ports
        for el in vm.findall(path):
            el.getparent().remove(el)  # type: ignore[union-attr]
    resources = {0: f"one-vm-{VM_ID}-disk-0", 1: datablock, 2: f"one-vm-{VM_ID}-disk-2", 3: f"one-vm-{VM_ID}-disk-3"}
    fe = Frontend(cloud, paused=False, hostname=FE)
    node1_dir, node2_dir = cloud.vm_dir("node1", VM_ID), cloud.vm_dir("node2", VM_ID)

    during: list[dict[str, Any]] = []
    call_vmm = fe.vmm

    def vmm(script: str, *argv: str, stdin: bytes) -> str:
        if script == "migrate-tweaks":  # where oned runs virsh migrate: between premigrate and post/failmigrate
            during.append(state(cloud, resources))
        return call_vmm(script, *argv, stdin=stdin)

    fe.vmm = vmm  # type: ignore[method-assign]
    # during the move: node1 and node2 hold every resource, two primaries allowed, node2 linked
    moving = {res: ({**replicas.get(res, {"stor1": False, "stor2": False}), "node1": res != datablock,
                     "node2": True}, "yes", cloud.dev("node2", res)) for res in resources.values()}
    try:
        dom_uuid = fe.deploy(VM_ID)
        assert virsh("domstate", name).stdout.strip() == "running"
        deployed = {res: ({**replicas.get(res, {"stor1": False, "stor2": False}), "node1": res != datablock},
                          None, None) for res in resources.values()}
        assert state(cloud, resources) == deployed, "diskless on node1 (the datablock is local there)"
        for n, res in resources.items():
            assert cloud.link("node1", VM_ID, n) == cloud.dev("node1", res)
        assert read(cloud.disk_path("node1", VM_ID, 0), len(image_data)) == image_data
        marker = b"written on node1 " + uuid.uuid4().hex.encode()
        write(cloud.disk_path("node1", VM_ID, 1), marker)

        # -- a migration that fails: failmigrate takes node2's resources and the property back ----
        # the destination cannot listen for the guest's memory on an address it does not have
        good_options = cloud.settings["MIGRATE_OPTIONS"]
        cloud.configure(MIGRATE_OPTIONS="--migrateuri tcp://192.0.2.1")
        with pytest.raises(DriverFailed, match=r"node1: migrate .* to node2"):
            fe.migrate(VM_ID, "node2")
        assert during == [moving]
        assert history(cloud, VM_ID) == [("0", "node1"), ("1", "node2"), ("2", "node1")]
        assert fe.host(VM_ID) == "node1" and cloud.oned.vm(VM_ID).findtext("LCM_STATE") == "3"
        assert virsh("domstate", name).stdout.strip() == "running"
        assert hosts.state(name) is None
        assert state(cloud, resources) == deployed, "node2 let go, one primary again"
        assert not node2_dir.exists()

        # -- the move: premigrate, migrate-tweaks, postmigrate ---------------------------------------
        cloud.configure(MIGRATE_OPTIONS=good_options)
        mark = len(migrations(cloud))
        fe.migrate(VM_ID, "node2")
        assert during == [moving, moving]
        assert history(cloud, VM_ID) == [("0", "node1"), ("1", "node2"), ("2", "node1"), ("3", "node2")]
        assert fe.host(VM_ID) == "node2" and cloud.oned.vm(VM_ID).findtext("LCM_STATE") == "3"
        assert virsh("domstate", name, check=False).returncode != 0, "the domain left node1's libvirtd"
        assert hosts.state(name) == "running"
        assert hosts.virsh("domuuid", name).stdout.strip() == dom_uuid == fe.deploy_id(VM_ID)
        (done,) = migrations(cloud)[mark:]
        assert done.uuid == dom_uuid and done.unsafe
        live = etree.fromstring(hosts.virsh("dumpxml", name).stdout.encode())
        sources = [d.find("source") for d in live.iterfind("devices/disk")]
        assert [s.get("dev") or s.get("file") for s in sources if s is not None] == [
            f"{node2_dir}/disk.{n}" for n in range(4)]
        assert live.findtext(f"metadata/{{{ONE_NS}}}vm/{{{ONE_NS}}}system_datastore") == str(node2_dir)
        moved = {res: ({**replicas.get(res, {"stor1": False, "stor2": False}),
                        **({"node1": False} if res == datablock else {}), "node2": True}, None, cloud.dev("node2", res))
                 for res in resources.values()}
        assert state(cloud, resources) == moved, "node1's diskless resources gone, its diskful replica kept"
        assert not node1_dir.exists(), "postmigrate removed node1's VM directory"
        assert (node2_dir / "deployment.0").is_file(), "premigrate copied the VM directory"
        assert read(cloud.disk_path("node2", VM_ID, 1), len(marker)) == marker
        assert read(cloud.disk_path("node2", VM_ID, 0), len(image_data)) == image_data
    finally:
        virsh("destroy", name, check=False)
        hosts.virsh("destroy", name, check=False)

    # -- terminate on node2: cancel there, the epilog with node2's paths ----------------------------
    epilog = fe.terminate(VM_ID)
    assert epilog.name == "transfer.3.epilog"
    assert epilog.read_text().splitlines()[-1] == (
        f"DELETE linstor_un {cloud.tm_path('node2', VM_ID)} {VM_ID} {SYSTEM_DS}")
    assert f"MVDS linstor_un {cloud.tm_path('node2', VM_ID, 1)} " in epilog.read_text()
    assert hosts.state(name) is None
    assert name not in virsh("list", "--all", "--name").stdout.split()
    destroys = [cmd for host, cmd in cloud.ssh_commands() if host == "node2" and " destroy " in cmd]
    assert destroys and destroys[-1].endswith(f"destroy {dom_uuid}")
    rds = cloud.sim.inventory()["resource_definitions"]
    assert set(rds) == set(replicas), "only the images are left"
    assert {res: cloud.placed(res) for res in replicas} == replicas, "no diskless resource left, replicas kept"
    assert all(TWO_PRIMARIES not in cloud.props(res) for res in replicas)
    assert sorted(cloud.sim.inventory()["loops"]) == sorted(
        vd["loop"] for rd in rds.values() for vd in rd["volumes"].values())
    assert links(cloud) == [str(cloud.sim.device_path(datablock, "node1"))], "only node1's local replica's by-res"
    for host in ("node1", "node2", FE):
        assert not cloud.vm_dir(host, VM_ID).exists(), host
    assert read(cloud.sim.device_path(datablock, "node1"), len(marker)) == marker, "MVDS kept the data"
