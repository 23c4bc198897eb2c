"""The LINSTOR backend (datastore/backends/linstor.py) against the LINSTOR controller simulator
(tests/sim/linstor.py, which is NOT LINSTOR: one sparse file per volume, one loop device seen
by every node holding the resource through that node's own ``by-res`` link).

Every backend method is called directly; the requests the simulator received (``sim.calls``,
``sim.requests``) show what python-linstor sent, and data is checked through the loop devices
behind each node's ``by-res`` links. Copies (CLONE_MODE=copy, reverting to an older
snapshot) run ``dd`` on the "bridge host", here this machine as the diskless front-end node.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import linstor
import pytest
from sim.linstor import LinstorSim

from datastore.backend import HostRef
from datastore.backends import backend_class
from datastore.backends.linstor import Linstor, LinstorNames, Placement
from datastore.naming import Names, for_driver
from onelib.config import Config
from onelib.errors import Conflict, DriverError, NotFound, Transient
from onelib.hostcmd import Host

MiB = 2**20
SIZE = 8 * MiB


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[LinstorSim]:
    """node1..3: LVM-thin pool "thin" (sites s1, s1, s2); node4: LVM pool "thick" (no
    snapshots); fe: diskless only (the front-end / bridge host)."""
    with LinstorSim(tmp_path / "linstor") as running:
        for name, site in (("node1", "s1"), ("node2", "s1"), ("node3", "s2")):
            running.add_node(name, tmp_path / name, pool="thin", props={"Aux/site": site})
        running.add_node("node4", tmp_path / "node4", pool="thick", provider="LVM", props={"Aux/site": "s2"})
        running.add_node("fe", tmp_path / "fe", pool=None)
        yield running


def backend(sim: LinstorSim, **attrs: str) -> Linstor:
    """A backend configured like a datastore with these attributes; copies run here (fe)."""
    values = {"LS_CONTROLLERS": f"127.0.0.1:{sim.port}"}
    values.update(attrs)
    made = Linstor.from_config(Config(values))
    ref = HostRef(name="", client="fe", device_dir=str(sim.inventory()["nodes"]["fe"]["by_res_dir"]))
    made.mover = lambda: (ref, Host(""))
    return made


def fe(sim: LinstorSim) -> HostRef:
    return HostRef(name="", client="fe", device_dir=str(sim.inventory()["nodes"]["fe"]["by_res_dir"]))


def host(sim: LinstorSim, node: str) -> HostRef:
    return HostRef(name=node, client=node, device_dir=str(sim.inventory()["nodes"][node]["by_res_dir"]))


def placed(sim: LinstorSim, name: str) -> dict[str, bool]:
    """node -> diskless?"""
    rd = sim.inventory()["resource_definitions"][name]
    return {node: bool(r["diskless"]) for node, r in rd["resources"].items()}


def rd(sim: LinstorSim, name: str) -> dict[str, Any]:
    return dict(sim.inventory()["resource_definitions"][name])


def names(sim: LinstorSim, since: int = 0) -> list[str]:
    return [c.name for c in sim.calls[since:] if c.name != "controller_version"]


def body(sim: LinstorSim, name: str) -> Any:
    return next(c.body for c in reversed(sim.calls) if c.name == name)


def select_filter(sim: LinstorSim) -> dict[str, Any]:
    """The last auto-placement's filter (python-linstor always adds diskless_on_remaining)."""
    sf = dict(body(sim, "resource_auto_place")["select_filter"])
    assert sf.pop("diskless_on_remaining", False) is False
    return sf


def write(path: str | Path, data: bytes, offset: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str | Path, length: int, offset: int = 0) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def put(sim: LinstorSim, b: Linstor, name: str, data: bytes) -> None:
    """Write ``data`` at the start of ``name`` through a diskless attachment on fe."""
    dev = b.attach(name, fe(sim))
    write(dev, data)
    b.detach(name, fe(sim))


def get(sim: LinstorSim, b: Linstor, name: str, length: int) -> bytes:
    dev = b.attach(name, fe(sim))
    try:
        return read(dev, length)
    finally:
        b.detach(name, fe(sim))


# --- configuration ----------------------------------------------------------------------------


def test_registered_with_its_naming_scheme() -> None:
    assert backend_class("linstor_un") is Linstor
    names_ = for_driver("linstor_un")
    assert isinstance(names_, LinstorNames)
    assert (names_.image(7), names_.clone(7, 42, 0), names_.volatile(42, 2, swap=True), names_.context(42, 3),
            names_.checkpoint(42), names_.nvram(42)) == (
        "one-image-7", "one-vm-42-disk-0", "one-vm-42-disk-2", "one-vm-42-disk-3", "one-vm-42-checkpoint",
        "one-vm-42-nvram")
    assert names_.disk_snapshot("one-vm-42-disk-0", 3) == "one-vm-42-disk-0@snapshot-3"
    assert names_.source("one-image-7") == "/dev/drbd/by-res/one-image-7/0"
    assert names_.source_volume("/dev/drbd/by-res/one-image-7/0") == "one-image-7"
    assert names_.source_volume("/dev/drbd/by-res/../x/0") == "" and names_.source_volume("a;b") == ""
    assert names_.disk_owner("one-vm-42-disk-3") == (42, 3) and names_.disk_owner("one-image-7") is None
    assert names_.split_disk_snapshot("one-vm-42-disk-0@snapshot-3") == ("one-vm-42-disk-0", 3)
    assert for_driver("linstor_un", "two").image(1) == "two-image-1"
    # the StorPool scheme is unchanged
    sp = for_driver("storpool")
    assert type(sp) is Names and sp.clone(7, 42, 0) == "one-img-7-42-0" and sp.source("one-img-7") == "one-img-7"
    assert sp.disk_snapshot("v", 1) == "v-snap1" and sp.disk_owner("one-sys-42-2-raw") == (42, 2)


def test_configuration_controllers_tls_and_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    b = Linstor.from_config(Config({"LS_CONTROLLERS": "ctl1,ctl2:3371", "LS_CERTFILE": "/c.pem",
                                    "LS_KEYFILE": "/k.pem", "LS_CAFILE": "/ca.pem",
                                    "NODE_LIST": "n1 n2", "STORAGE_POOL": "a,b", "LAYER_LIST": "drbd,storage",
                                    "AUTO_PLACE": "2", "CHECKPOINT_AUTO_PLACE": "1", "ENCRYPTION": "yes"}))
    assert b.controllers == ["linstor+ssl://ctl1", "linstor+ssl://ctl2:3371"]
    assert (b.certfile, b.keyfile, b.cafile) == ("/c.pem", "/k.pem", "/ca.pem")  # the CA is no certfile
    s = b.settings
    assert (s.nodes, s.pools, s.layers, s.replicas, s.checkpoint_replicas, s.encrypt) == (
        ["n1", "n2"], ["a", "b"], ["drbd", "storage"], 2, 1, True)
    monkeypatch.delenv("LS_CONTROLLERS", raising=False)
    monkeypatch.setattr(linstor.Config, "CONFIG", {})  # no linstor-client.conf
    assert Linstor.from_config(Config({})).controllers == ["linstor://localhost"]
    monkeypatch.setenv("LS_CONTROLLERS", "c1,c2")  # as the linstor client reads it
    assert Linstor.from_config(Config({})).controllers == ["linstor://c1", "linstor://c2"]
    # REPLICA_COUNT is the current name, AUTO_PLACE the older one
    assert Placement.from_config(Config({"REPLICA_COUNT": "3", "AUTO_PLACE": "2"})).replicas == 3
    with pytest.raises(DriverError, match="CLONE_MODE"):
        Placement.from_config(Config({"CLONE_MODE": "fast"}))
    with pytest.raises(DriverError, match="number of replicas"):
        Placement.from_config(Config({"REPLICA_COUNT": "two"}))
    # hosts: the node is the host's name (LS_NODE overrides); the device root is configurable
    conf = Config({"LS_DEVICE_DIR": "/srv/by-res", "LS_FRONTEND_NODE": "front"})
    assert Linstor.host_ref("node7", {}, conf) == HostRef("node7", "node7", "/srv/by-res")
    assert Linstor.host_ref("h", {"LS_NODE": "n", "LS_DEVICE_DIR": "/d"}, conf) == HostRef("h", "n", "/d")
    assert Linstor.host_ref("", {}, conf).client == "front"
    assert Linstor.host_ref("", {}, Config({})).client == socket.gethostname().split(".")[0]
    assert Linstor.host_ref("x", {}, Config({})).device_dir == "/dev/drbd/by-res"
    assert Linstor.default_placement(Config({"RESOURCE_GROUP": "rg1"}), LinstorNames(), 100) == "rg1"


def test_failover_to_the_second_controller_and_none_answering(sim: LinstorSim) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    b = backend(sim, LS_CONTROLLERS=f"127.0.0.1:{dead},127.0.0.1:{sim.port}", NODE_LIST="node1", STORAGE_POOL="thin")
    b.create("one-image-1", SIZE, placement="", tags={})
    assert b.get("one-image-1") is not None and placed(sim, "one-image-1") == {"node1": False}
    nobody = backend(sim, LS_CONTROLLERS=f"127.0.0.1:{dead}")
    with pytest.raises(Transient, match="no LINSTOR controller answers"):
        nobody.get("one-image-1")
    # a read whose connection drops is sent again (reconnecting); a change is not
    sim.fail("resource_dfn_list", "drop")
    assert b.get("one-image-1") is not None
    sim.fail("resource_dfn_modify", "drop")
    with pytest.raises(Transient, match="re-run"):
        b.set_tags("one-image-1", {"x": "1"})


# --- placement ----------------------------------------------------------------------------------


def test_create_on_node_list_with_metadata(sim: LinstorSim) -> None:
    b = backend(sim, NODE_LIST="node1 node3", STORAGE_POOL="thin")
    mark = len(sim.calls)
    b.create("one-vm-42-disk-0", SIZE, placement="", tags={"virt": "one", "nvm": "42", "diskid": "0", "type": "NPERS"})
    # properties carry incomplete=1 until the resource is placed (a crash leaves it marked)
    assert names(sim, mark) == ["resource_dfn_create", "resource_dfn_modify", "volume_dfn_create", "resource_create",
                                "resource_dfn_modify"]
    assert next(c.body for c in sim.calls[mark:] if c.name == "resource_dfn_modify")["override_props"][
        "Aux/one/incomplete"] == "1"
    assert placed(sim, "one-vm-42-disk-0") == {"node1": False, "node3": False}
    info = rd(sim, "one-vm-42-disk-0")
    assert info["props"] == {"Aux/one/virt": "one", "Aux/one/VM_ID": "42", "Aux/one/DISK_ID": "0",
                             "Aux/one/type": "NPERS"}  # addon-linstor_un's VM_ID and DISK_ID
    assert info["volumes"][0]["size_kib"] == SIZE // 1024 and info["resources"]["node1"]["pool"] == "thin"
    vol = b.get("one-vm-42-disk-0")
    assert vol is not None and vol.size == SIZE and vol.tags == {"virt": "one", "nvm": "42", "diskid": "0",
                                                                 "type": "NPERS"}
    with pytest.raises(Conflict):
        b.create("one-vm-42-disk-0", SIZE, placement="", tags={})
    # what a crashed create left (still marked incomplete) is made again; the caller's own
    # incomplete mark stays (an in-place import removes it when its data is written)
    with linstor.Linstor(sim.url) as lin:
        lin.resource_dfn_create("one-vm-42-disk-9")
        lin.resource_dfn_modify("one-vm-42-disk-9", {"Aux/one/incomplete": "1", "Aux/one/VM_ID": "42"})
    b.create("one-vm-42-disk-9", SIZE, placement="", tags={"nvm": "42", "incomplete": "1"})
    assert placed(sim, "one-vm-42-disk-9") == {"node1": False, "node3": False}
    assert rd(sim, "one-vm-42-disk-9")["props"] == {"Aux/one/VM_ID": "42", "Aux/one/incomplete": "1"}
    with pytest.raises(Conflict):  # a finished resource is never replaced
        b.clone("one-vm-42-disk-9", "one-vm-42-disk-0", placement="", tags={}, from_snapshot=False)
    assert rd(sim, "one-vm-42-disk-0")["props"]["Aux/one/VM_ID"] == "42"
    b.set_tags("one-vm-42-disk-0", {"type": "", "qc": "gold"})
    assert b.get("one-vm-42-disk-0").tags == {"virt": "one", "nvm": "42", "diskid": "0", "qc": "gold"}  # type: ignore[union-attr]
    # several pools: each node gets the first of the list it has
    sim.add_pool("node2", "fast")
    b2 = backend(sim, NODE_LIST="node2 node3", STORAGE_POOL="fast thin")
    b2.create("one-image-2", SIZE, placement="", tags={})
    pools = {n: r["pool"] for n, r in rd(sim, "one-image-2")["resources"].items()}
    assert pools == {"node2": "fast", "node3": "thin"}


def test_create_auto_places_with_the_datastore_filter(sim: LinstorSim) -> None:
    b = backend(sim, REPLICA_COUNT="2", STORAGE_POOL="thin", REPLICAS_ON_DIFFERENT="Aux/site",
                LAYER_LIST="drbd,storage", PROVIDERS="LVM_THIN", ENCRYPTION="yes")
    b.create("one-image-1", SIZE, placement="", tags={})
    sf = select_filter(sim)
    assert sf == {"place_count": 2, "storage_pool_list": ["thin"], "replicas_on_different": ["Aux/site"],
                  "provider_list": ["LVM_THIN"]}
    nodes = set(placed(sim, "one-image-1"))
    assert len(nodes) == 2 and "node3" in nodes  # one per site
    assert rd(sim, "one-image-1")["volumes"][0]["flags"] == ["ENCRYPTED"]
    assert rd(sim, "one-image-1")["layers"] == ["DRBD", "STORAGE"]

    same = backend(sim, AUTO_PLACE="2", STORAGE_POOL="thin", REPLICAS_ON_SAME="Aux/site",
                   DO_NOT_PLACE_WITH="one-image-9")
    same.create("one-image-2", SIZE, placement="", tags={})
    assert set(placed(sim, "one-image-2")) == {"node1", "node2"}
    assert select_filter(sim)["not_place_with_rsc"] == ["one-image-9"]

    regex = backend(sim, REPLICA_COUNT="1", STORAGE_POOL="thin thick", DO_NOT_PLACE_WITH_REGEX="^one-image-[12]$")
    regex.create("one-image-3", SIZE, placement="", tags={})
    assert set(placed(sim, "one-image-3")) == {"node4"}  # every thin node holds image 1 or 2
    assert select_filter(sim)["not_place_with_rsc_regex"] == "^one-image-[12]$"

    # NODE_LIST plus a larger REPLICA_COUNT: the listed nodes, then auto-placement for the rest
    both = backend(sim, NODE_LIST="node4", REPLICA_COUNT="2", STORAGE_POOL="thin thick")
    both.create("one-image-4", SIZE, placement="", tags={})
    where = placed(sim, "one-image-4")
    assert len(where) == 2 and "node4" in where

    # the checkpoint volume uses CHECKPOINT_AUTO_PLACE
    cp = backend(sim, NODE_LIST="node1 node2", REPLICA_COUNT="2", CHECKPOINT_AUTO_PLACE="1", STORAGE_POOL="thin")
    cp.create("one-vm-42-checkpoint", SIZE, placement="", tags={"type": "CHKPNT", "nvm": "42"})
    assert len(placed(sim, "one-vm-42-checkpoint")) == 1


def test_create_failures_leave_nothing(sim: LinstorSim) -> None:
    with pytest.raises(DriverError, match="RESOURCE_GROUP, or NODE_LIST or REPLICA_COUNT"):
        backend(sim, STORAGE_POOL="thin").create("one-image-1", SIZE, placement="", tags={})
    too_many = backend(sim, REPLICA_COUNT="9", STORAGE_POOL="thin")
    with pytest.raises(DriverError, match="Not enough available nodes"):
        too_many.create("one-image-1", SIZE, placement="", tags={})
    assert "one-image-1" not in sim.inventory()["resource_definitions"]
    with pytest.raises(DriverError, match="acceptable LINSTOR resource name"):
        too_many.create("one image", SIZE, placement="", tags={})


def test_resource_group_placement(sim: LinstorSim) -> None:
    with linstor.Linstor(sim.url) as lin:
        lin.resource_group_create("one-rg", place_count=2, storage_pool=["thin"], replicas_on_same=["Aux/site"])
        lin.volume_group_create("one-rg")
    b = backend(sim, RESOURCE_GROUP="one-rg")
    assert Linstor.default_placement(Config({"RESOURCE_GROUP": "one-rg"}), LinstorNames(), 1) == "one-rg"
    b.create("one-image-1", SIZE, placement="one-rg", tags={"virt": "one"})
    assert rd(sim, "one-image-1")["resource_group"] == "one-rg"
    assert set(placed(sim, "one-image-1")) == {"node1", "node2"}  # the group's filter: same site
    assert select_filter(sim) == {}  # nothing set on the datastore
    # datastore attributes on top of the group's filter
    over = backend(sim, RESOURCE_GROUP="one-rg", REPLICA_COUNT="1", STORAGE_POOL="thick", PROVIDERS="LVM")
    over.create("one-image-2", SIZE, placement="one-rg", tags={})
    assert placed(sim, "one-image-2") == {"node4": False}
    assert select_filter(sim) == {"place_count": 1, "storage_pool_list": ["thick"], "provider_list": ["LVM"]}
    cap = b.capacity("one-rg")
    assert cap.total > 0 and 0 < cap.free <= cap.total and cap.used == cap.total - cap.free
    with pytest.raises(NotFound):
        b.capacity("no-such-group")


# --- attach / detach ------------------------------------------------------------------------------


def test_attach_is_a_diskless_resource_and_detach_never_removes_a_replica(sim: LinstorSim) -> None:
    b = backend(sim, NODE_LIST="node1 node2", STORAGE_POOL="thin")
    b.create("one-image-1", SIZE, placement="", tags={})
    mark = len(sim.calls)
    dev = b.attach("one-image-1", fe(sim))
    assert names(sim, mark) == ["resource_make_available"]
    assert dev == f"{fe(sim).device_dir}/one-image-1/0" and os.readlink(dev) == sim.loop_device("one-image-1")
    assert placed(sim, "one-image-1") == {"node1": False, "node2": False, "fe": True}
    write(dev, b"through-fe")
    # a node holding a replica uses it (no diskless resource); same data
    dev1 = b.attach("one-image-1", host(sim, "node1"))
    assert read(dev1, 10) == b"through-fe" and placed(sim, "one-image-1")["node1"] is False
    assert b.device_path("one-image-1", host(sim, "node1")) == dev1
    b.detach("one-image-1", host(sim, "node1"))
    assert placed(sim, "one-image-1") == {"node1": False, "node2": False, "fe": True}  # replica kept
    b.detach("one-image-1", fe(sim))
    assert placed(sim, "one-image-1") == {"node1": False, "node2": False} and not os.path.exists(dev)
    b.detach("one-image-1", fe(sim))  # absent: fine
    b.detach("one-image-404", fe(sim))
    with pytest.raises(NotFound):
        b.attach("one-image-404", fe(sim))
    # many at once; detach from every host removes only diskless resources
    b.create("one-image-2", SIZE, placement="", tags={})
    devices = b.attach_many([("one-image-1", False), ("one-image-2", True)], host(sim, "node3"))
    assert devices == {n: f"{host(sim, 'node3').device_dir}/{n}/0" for n in ("one-image-1", "one-image-2")}
    b.attach("one-image-2", fe(sim))
    b.detach_many(["one-image-1", "one-image-2"], None)
    assert placed(sim, "one-image-1") == placed(sim, "one-image-2") == {"node1": False, "node2": False}


def test_diskless_pool_and_prefer_node(sim: LinstorSim) -> None:
    sim.add_pool("fe", "dl-pool", provider="DISKLESS")
    b = backend(sim, NODE_LIST="node1", STORAGE_POOL="thin", DISKLESS_POOL="dl-pool")
    b.create("one-image-1", SIZE, placement="", tags={})
    b.attach("one-image-1", fe(sim))
    b.attach("one-image-1", fe(sim))  # already there: fine
    assert rd(sim, "one-image-1")["resources"]["fe"]["pool"] == "dl-pool"
    assert body(sim, "resource_create")[0]["resource"]["props"] == {"StorPoolName": "dl-pool"}
    # PREFER_NODE: a diskful replica on the host when it can hold one, else diskless
    pref = backend(sim, NODE_LIST="node1", STORAGE_POOL="thin", PREFER_NODE="yes")
    pref.create("one-image-2", SIZE, placement="", tags={})
    pref.attach("one-image-2", host(sim, "node2"))
    pref.attach("one-image-2", fe(sim))
    assert placed(sim, "one-image-2") == {"node1": False, "node2": False, "fe": True}


# --- snapshots ------------------------------------------------------------------------------------


def test_snapshots_rollback_latest_and_restore_copy_for_older(sim: LinstorSim) -> None:
    b = backend(sim, NODE_LIST="node1 node2", STORAGE_POOL="thin")
    b.create("one-image-1", SIZE, placement="", tags={})
    put(sim, b, "one-image-1", b"AAAA")
    b.snapshot("one-image-1", "one-image-1@snapshot-0", tags={"nvm": "42"})
    put(sim, b, "one-image-1", b"BBBB")
    b.snapshot("one-image-1", "snapshot-1")  # a bare snapshot name is the resource's
    put(sim, b, "one-image-1", b"CCCC")
    with pytest.raises(Conflict):
        b.snapshot("one-image-1", "one-image-1@snapshot-1")
    with pytest.raises(DriverError, match="does not belong"):
        b.snapshot("one-image-1", "one-image-2@snapshot-1")
    with pytest.raises(DriverError, match="delete themselves"):
        b.snapshot("one-image-1", "one-image-1@x-1", delete_after=60)
    snap = b.get("one-image-1@snapshot-0")
    assert snap is not None and snap.snapshot and snap.size == SIZE and snap.tags == {"nvm": "42"}
    assert [v.name for v in b.snapshots("one-image-1@")] == ["one-image-1@snapshot-0", "one-image-1@snapshot-1"]
    assert {v.name for v in b.find("one-image-1")} == {"one-image-1", "one-image-1@snapshot-0",
                                                         "one-image-1@snapshot-1"}
    b.set_tags("one-image-1@snapshot-1", {"k": "v"}, snapshot=True)
    assert b.get("one-image-1@snapshot-1").tags == {"k": "v"}  # type: ignore[union-attr]

    # the latest: LINSTOR's rollback
    mark = len(sim.calls)
    b.revert("one-image-1", "one-image-1@snapshot-1")
    assert names(sim, mark) == ["snapshot_dfn_list", "snapshot_rollback"]
    assert get(sim, b, "one-image-1", 4) == b"BBBB"
    # an older one: restored into <res>-revert and copied back; later snapshots stay
    mark = len(sim.calls)
    b.revert("one-image-1", "one-image-1@snapshot-0")
    assert "snapshot_rollback" not in names(sim, mark)
    assert "snapshot_resource_restore" in names(sim, mark)
    assert get(sim, b, "one-image-1", 4) == b"AAAA"
    assert set(sim.inventory()["resource_definitions"]) == {"one-image-1"}  # the temporary is gone
    assert placed(sim, "one-image-1") == {"node1": False, "node2": False}   # and the copy's attachments
    assert {v.name for v in b.snapshots()} == {"one-image-1@snapshot-0", "one-image-1@snapshot-1"}
    with pytest.raises(NotFound):
        b.revert("one-image-1", "one-image-1@snapshot-7")

    # a snapshot is read through a temporary resource restored from it
    dev = b.attach("one-image-1@snapshot-1", fe(sim), snapshot=True)
    assert read(dev, 4) == b"BBBB" and "one-image-1-snapshot-1" in sim.inventory()["resource_definitions"]
    b.detach("one-image-1@snapshot-1", fe(sim), snapshot=True)
    assert set(sim.inventory()["resource_definitions"]) == {"one-image-1"}

    b.delete("one-image-1@snapshot-0", snapshot=True)
    b.delete("one-image-1@snapshot-0", snapshot=True)  # absent: fine
    assert [v.name for v in b.snapshots()] == ["one-image-1@snapshot-1"]


def test_group_snapshot_is_one_multi_resource_snapshot(sim: LinstorSim) -> None:
    b = backend(sim, NODE_LIST="node1", STORAGE_POOL="thin")
    for name in ("one-vm-42-disk-0", "one-vm-42-disk-1"):
        b.create(name, SIZE, placement="", tags={})
    mark = len(sim.calls)
    b.group_snapshot([("one-vm-42-disk-0", "one-vm-42-disk-0@backup-1"),
                      ("one-vm-42-disk-1", "one-vm-42-disk-1@backup-1")], tags={"nvm": "42"})
    assert names(sim, mark)[0] == "snapshot_create_multi"
    assert {v.name: v.tags for v in b.snapshots()} == {"one-vm-42-disk-0@backup-1": {"nvm": "42"},
                                                       "one-vm-42-disk-1@backup-1": {"nvm": "42"}}
    with pytest.raises(DriverError, match="one snapshot name"):
        b.group_snapshot([("one-vm-42-disk-0", "one-vm-42-disk-0@aa"), ("one-vm-42-disk-1", "one-vm-42-disk-1@bb")])
    with pytest.raises(NotFound):  # all or nothing
        b.group_snapshot([("one-vm-42-disk-0", "one-vm-42-disk-0@cc"), ("one-vm-9-disk-0", "one-vm-9-disk-0@cc")])
    assert len(b.snapshots()) == 2


def test_snapshots_refused_on_a_pool_without_snapshot_support(sim: LinstorSim) -> None:
    b = backend(sim, NODE_LIST="node4", STORAGE_POOL="thick")
    b.create("one-image-1", SIZE, placement="", tags={})
    with pytest.raises(DriverError, match="does not support snapshots"):
        b.snapshot("one-image-1", "one-image-1@snapshot-0")


# --- clones -------------------------------------------------------------------------------------


def test_clone_copy_mode_places_by_the_datastore_and_copies(sim: LinstorSim) -> None:
    src = backend(sim, NODE_LIST="node1", STORAGE_POOL="thin")
    src.create("one-image-1", SIZE, placement="", tags={})
    put(sim, src, "one-image-1", b"IMAGE-DATA")
    b = backend(sim, NODE_LIST="node2 node3", STORAGE_POOL="thin")  # CLONE_MODE copy is the default
    b.clone("one-image-1", "one-vm-42-disk-0", placement="", tags={"nvm": "42"}, size=2 * SIZE, from_snapshot=False)
    assert placed(sim, "one-vm-42-disk-0") == {"node2": False, "node3": False}
    assert rd(sim, "one-vm-42-disk-0")["volumes"][0]["size_kib"] * 1024 == 2 * SIZE
    assert get(sim, b, "one-vm-42-disk-0", 10) == b"IMAGE-DATA"
    assert placed(sim, "one-image-1") == {"node1": False}  # the copy's attachments are gone
    assert sim.inventory()["resource_definitions"]["one-image-1"]["snapshots"] == {}
    with pytest.raises(NotFound):
        b.clone("one-image-404", "one-vm-42-disk-1", placement="", tags={}, from_snapshot=False)
    assert "one-vm-42-disk-1" not in sim.inventory()["resource_definitions"]
    # a failing copy leaves no clone
    b.mover = lambda: (fe(sim), Host("", local=True, timeout=30, ssh=["false"]))
    sim.fail("resource_make_available", times=2, skip=1)
    with pytest.raises(DriverError):
        b.clone("one-image-1", "one-vm-42-disk-2", placement="", tags={}, from_snapshot=False)
    assert "one-vm-42-disk-2" not in sim.inventory()["resource_definitions"]


def test_clone_snapshot_mode_and_copy_on_a_pool_without_snapshots(sim: LinstorSim) -> None:
    b = backend(sim, NODE_LIST="node1 node2", STORAGE_POOL="thin", CLONE_MODE="snapshot")
    b.create("one-image-1", SIZE, placement="", tags={})
    put(sim, b, "one-image-1", b"SNAPCLONE")
    mark = len(sim.calls)
    b.clone("one-image-1", "one-vm-42-disk-0", placement="", tags={"nvm": "42"}, size=2 * SIZE, from_snapshot=False)
    assert names(sim, mark)[:1] == ["snapshot_create"] and "snapshot_resource_restore" in names(sim, mark)
    assert placed(sim, "one-vm-42-disk-0") == {"node1": False, "node2": False}  # the snapshot's nodes
    assert get(sim, b, "one-vm-42-disk-0", 9) == b"SNAPCLONE"
    assert rd(sim, "one-vm-42-disk-0")["volumes"][0]["size_kib"] * 1024 == 2 * SIZE
    assert rd(sim, "one-vm-42-disk-0")["props"] == {"Aux/one/VM_ID": "42"}
    # the base snapshot is named after the clone and goes with it
    assert list(rd(sim, "one-image-1")["snapshots"]) == ["one-vm-42-disk-0"]
    b.delete("one-vm-42-disk-0")
    assert rd(sim, "one-image-1")["snapshots"] == {}
    assert "one-vm-42-disk-0" not in sim.inventory()["resource_definitions"]

    thick = backend(sim, NODE_LIST="node4", STORAGE_POOL="thick", CLONE_MODE="snapshot")
    thick.create("one-image-2", SIZE, placement="", tags={})
    put(sim, thick, "one-image-2", b"THICK")
    thick.clone("one-image-2", "one-vm-43-disk-0", placement="", tags={}, from_snapshot=False)
    assert get(sim, thick, "one-vm-43-disk-0", 5) == b"THICK" and placed(sim, "one-vm-43-disk-0") == {"node4": False}

    # from a snapshot (cpds of a disk snapshot, the trash's restore)
    b.snapshot("one-image-1", "one-image-1@snapshot-0")
    put(sim, b, "one-image-1", b"CHANGED!!")
    b.clone("one-image-1@snapshot-0", "one-image-9", placement="", tags={}, from_snapshot=True)
    assert get(sim, b, "one-image-9", 9) == b"SNAPCLONE"
    with pytest.raises(Conflict):
        b.clone("one-image-1@snapshot-0", "one-image-9", placement="", tags={}, from_snapshot=True)


# --- delete, resize, rename -------------------------------------------------------------------


def test_delete_resize_rename(sim: LinstorSim) -> None:
    b = backend(sim, NODE_LIST="node1", STORAGE_POOL="thin")
    b.create("one-image-1", SIZE, placement="", tags={})
    b.snapshot("one-image-1", "one-image-1@snapshot-0")
    b.attach("one-image-1", fe(sim))
    b.resize("one-image-1", 2 * SIZE)
    assert os.path.getsize(sim.data_path("one-image-1")) == 2 * SIZE  # type: ignore[arg-type]
    mark = len(sim.calls)
    b.resize("one-image-1", 2 * SIZE)  # the size it has: nothing to do
    assert names(sim, mark) == ["resource_dfn_list"]
    with pytest.raises(DriverError, match="cannot shrink"):
        b.resize("one-image-1", SIZE)
    with pytest.raises(DriverError, match="cannot shrink"):
        b.resize("one-image-1", SIZE, shrink=True)
    with pytest.raises(NotFound):
        b.resize("one-image-404", SIZE)
    with pytest.raises(DriverError, match="cannot rename"):
        b.rename("one-image-1", "one-image-2")
    # delete: snapshots first (LINSTOR refuses otherwise), every resource with the definition
    b.delete("one-image-1")
    assert sim.inventory()["resource_definitions"] == {}
    b.delete("one-image-1")  # absent: fine
    assert b.get("one-image-1") is None and b.get("one-image-1@snapshot-0") is None


def test_dual_primary_for_live_migration(sim: LinstorSim) -> None:
    b = backend(sim, NODE_LIST="node1", STORAGE_POOL="thin")
    b.create("one-vm-42-disk-0", SIZE, placement="", tags={})
    b.dual_primary(["one-vm-42-disk-0"], True)
    assert rd(sim, "one-vm-42-disk-0")["props"]["DrbdOptions/Net/allow-two-primaries"] == "yes"
    b.dual_primary(["one-vm-42-disk-0"], False)
    assert "DrbdOptions/Net/allow-two-primaries" not in rd(sim, "one-vm-42-disk-0")["props"]
    b.dual_primary(["one-vm-42-disk-0", "one-vm-404-disk-0"], False)  # gone: fine


# --- accounting ---------------------------------------------------------------------------------


def test_usage_and_capacity(sim: LinstorSim) -> None:
    b = backend(sim, NODE_LIST="node1 node2", STORAGE_POOL="thin")
    b.create("one-image-1", SIZE, placement="", tags={})
    put(sim, b, "one-image-1", os.urandom(2 * MiB))
    b.snapshot("one-image-1", "one-image-1@snapshot-0")
    mark = len(sim.calls)
    use = b.usage()
    assert len(names(sim, mark)) == 3
    assert use["one-image-1"].size == SIZE and 2 * MiB <= use["one-image-1"].stored <= SIZE
    assert use["one-image-1@snapshot-0"].size == SIZE
    assert set(b.usage(["one-image-1"])) == {"one-image-1"}
    cap = b.capacity("")
    pools = sim.inventory()["nodes"]
    total = sum(pools[n]["pools"]["thin"]["capacity_kib"] for n in ("node1", "node2")) * 1024 // 2
    free = sum(pools[n]["pools"]["thin"]["free_kib"] for n in ("node1", "node2")) * 1024 // 2
    assert (cap.total, cap.free, cap.used) == (total, free, total - free)  # per replica: / 2 nodes
    with pytest.raises(DriverError, match="neither RESOURCE_GROUP nor STORAGE_POOL"):
        backend(sim, REPLICA_COUNT="2").capacity("")
    three = backend(sim, REPLICA_COUNT="3", STORAGE_POOL="thin").capacity("")
    assert three.total == 3 * pools["node1"]["pools"]["thin"]["capacity_kib"] * 1024 // 3


def test_errors_are_one_line_driver_errors(sim: LinstorSim) -> None:
    b = backend(sim, NODE_LIST="node1", STORAGE_POOL="thin")
    sim.fail("resource_dfn_create", message="controller\nis\nbusy")
    with pytest.raises(DriverError) as info:
        b.create("one-image-1", SIZE, placement="", tags={})
    assert "\n" not in str(info.value) and "controller is busy" in str(info.value)
    with pytest.raises(DriverError, match="not a LINSTOR snapshot name"):
        b.delete("one-image-1", snapshot=True)
    with pytest.raises(DriverError, match="acceptable"):
        b.get("bad name")
