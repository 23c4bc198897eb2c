"""Tests of the StorPool REST API simulator (tests/sim/storpool.py), which is not StorPool.

Every call goes over real HTTP, and every call is also made with StorPool's own client
library (``storpool.spapi``) whose typed reply objects are built strictly here (spapi itself
quietly returns half-parsed objects when a reply does not match its types). Attachments are
real loop devices, so these tests need root (as the project's test machines run).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sim import storpool as simmod
from sim.storpool import ROUTES, StorPoolSim
from storpool import spapi

TOKEN = "1556129910218014736"
MiB = 2**20
GiB = 2**30


def _our_loops(root: Path) -> set[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if str(root) in line}


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The simulator's root dir; no loop device onto it may outlive the test."""
    path = tmp_path / "sp"
    yield path
    assert not _our_loops(path), "loop devices leaked"


@pytest.fixture
def sim(root: Path) -> Iterator[StorPoolSim]:
    with StorPoolSim(root, token=TOKEN) as running:
        yield running


@pytest.fixture
def api(sim: StorPoolSim) -> spapi.Api:
    return spapi.Api(sim.host, sim.port, TOKEN, timeout=10, transientRetries=3, transientSleep=lambda retry: 0)


def strict(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an spapi method and build its typed reply strictly: any missing or ill-typed
    attribute raises InvalidArgumentError instead of yielding a partial object."""
    raw = method(*args, returnRawAPIData=True, **kwargs)
    return method.__globals__["returns"](raw)


def http_call(
    sim: StorPoolSim,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(sim.host, sim.port, timeout=10)
    try:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Storpool v1:{token}"
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, "/ctrl/1.0/" + path, payload, hdrs)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def api_error(call: Callable[[], Any]) -> spapi.ApiError:
    with pytest.raises(spapi.ApiError) as info:
        call()
    return info.value


def write_at(dev: str, offset: int, data: bytes) -> None:
    fd = os.open(dev, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(dev: str, offset: int, length: int) -> bytes:
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def dev_size(dev: str) -> int:
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------


def test_module_says_it_is_a_simulator() -> None:
    doc = simmod.__doc__ or ""
    assert "simulator of StorPool's REST API, for tests" in doc
    assert "It is NOT StorPool." in doc


def test_auth_envelope_and_error_shapes(sim: StorPoolSim) -> None:
    assert sim.url == f"http://127.0.0.1:{sim.port}" and sim.port > 0
    status, reply = http_call(sim, "GET", "VolumesList")
    assert status == 200 and reply == {"generation": reply["generation"], "data": []}

    for token in ("wrong", None):
        status, reply = http_call(sim, "GET", "VolumesList", token=token)
        assert status == 401
        assert reply == {"error": {"name": "authError", "descr": "Authorization failed", "transient": False}}
    err = api_error(spapi.Api(sim.host, sim.port, "wrong", transientRetries=0).volumesList)
    assert (err.status, err.name, err.transient) == (401, "authError", False)

    status, reply = http_call(sim, "GET", "VolumeDescribe/nope")
    assert status == 500 and reply["error"]["name"] == "objectDoesNotExist" and reply["error"]["transient"] is False
    status, reply = http_call(sim, "GET", "DisksList")
    assert status == 501 and reply["error"]["name"] == "notImplemented"
    status, reply = http_call(sim, "GET", "VolumeCreate")
    assert status == 405 and reply["error"]["name"] == "invalidParam"
    status, reply = http_call(sim, "POST", "VolumeCreate", raw=b"{not json")
    assert status == 500 and reply["error"]["name"] == "invalidParam"
    status, reply = http_call(sim, "POST", "VolumeCreate", {"name": "v", "size": MiB, "colour": "red"})
    assert reply["error"]["name"] == "invalidParam" and "colour" in reply["error"]["descr"]
    status, reply = http_call(sim, "POST", "VolumeDelete/a/b")
    assert reply["error"]["name"] == "invalidParam"
    status, reply = http_call(sim, "POST", "MultiCluster/SnapshotUpdate/x", {})
    assert status == 501  # SnapshotUpdate has no MultiCluster form in the reference


def test_names_tags_and_sizes(sim: StorPoolSim, api: spapi.Api) -> None:
    def create(body: dict[str, Any]) -> tuple[int, Any]:
        return http_call(sim, "POST", "VolumeCreate", body)

    for bad in ("list", "status", "a b", "a/b", "", "x" * 200, "a@b", "*a", "~nope"):
        assert create({"name": bad, "size": MiB})[1]["error"]["name"] == "invalidParam", bad
    for good in ("#a", "a.b:c-d_e", "x" * 199):
        assert create({"name": good, "size": MiB})[0] == 200, good
    assert strict(api.volumeList, "#a")[0].name == "#a"  # "#" is part of the path, no fragment
    for size in (0, -512, 1000, "1M", True):
        assert create({"name": "s", "size": size})[1]["error"]["name"] == "invalidParam", size
    assert create({"name": "nosize"})[1]["error"]["name"] == "invalidParam"
    for tags in ({"a b": "x"}, {"k": "v w"}, {"k": 1}, {"k" * 200: "v"}):
        assert create({"name": "t", "size": MiB, "tags": tags})[1]["error"]["name"] == "invalidParam", tags
    assert create({"name": "t", "size": MiB, "tags": {"nloc": "one", "empty": ""}})[0] == 200
    assert strict(api.volumeList, "t")[0].tags == {"nloc": "one"}  # an empty value means "no tag"

    # volumes and snapshots share one namespace
    strict(api.snapshotCreate, "t", {"name": "snap"})
    assert create({"name": "snap", "size": MiB})[1]["error"]["name"] == "objectExists"
    assert api_error(lambda: api.snapshotCreate("t", {"name": "#a"})).name == "objectExists"
    assert create({"name": "t", "size": MiB})[1]["error"]["name"] == "objectExists"
    # VolumeSnapshot names are VolumeNames; group snapshot names are SnapshotNames ('@' allowed)
    _status, reply = http_call(sim, "POST", "VolumeSnapshot/t", {"name": "t@x"})
    assert reply["error"]["name"] == "invalidParam"
    strict(api.snapshotCreateGroup, {"volumes": [{"volume": "t", "name": "t@x"}]})
    # the path argument may be a global id
    gid = strict(api.volumeList, "t")[0].globalId
    assert strict(api.volumeList, f"~{gid}")[0].name == "t"


def test_every_call_through_spapi(sim: StorPoolSim, api: spapi.Api) -> None:
    # placement groups and templates
    strict(api.placementGroupUpdate, "ssd", {"addDisks": [11, 12, 13, 14], "rmDisks": [14]})
    assert strict(api.placementGroupDescribe, "ssd").disks == {11, 12, 13}
    assert set(strict(api.placementGroupsList)) == {"default", "ssd"}
    strict(api.volumeTemplateCreate, {"name": "one-ds-1", "replication": 3, "placeAll": "ssd", "size": 8 * MiB})
    assert api_error(lambda: api.volumeTemplateCreate({"name": "one-ds-1"})).name == "objectExists"
    assert api_error(lambda: api.volumeTemplateCreate({"name": "x", "placeAll": "nope"})).name == "objectDoesNotExist"
    tpl = strict(api.volumeTemplateDescribe, "one-ds-1")
    assert (tpl.placeAll, tpl.placeTail, tpl.placeHead, tpl.replication, tpl.size) == ("ssd", "ssd", "ssd", 3, 8 * MiB)
    strict(api.volumeTemplateUpdate, "one-ds-1", {"replication": 2, "propagate": True})
    assert [t.name for t in strict(api.volumeTemplatesList)] == ["one-ds-1"]

    # volumes
    created = strict(api.volumeCreate, {"name": "one-img-1", "template": "one-ds-1", "tags": {"virt": "one"}})
    assert created.ok and created.globalId
    vol = strict(api.volumeList, "one-img-1")[0]
    assert (vol.size, vol.replication, vol.templateName, vol.placeAll) == (8 * MiB, 2, "one-ds-1", "ssd")
    assert [v.name for v in strict(api.volumesList)] == ["one-img-1"]
    described = strict(api.volumeDescribe, "one-img-1")
    assert described.targetDiskSets == [[11, 12]] and len(described.objects) == described.objectsCount == 1
    assert strict(api.volumeInfo, "one-img-1").disksCount == 2
    unnamed = strict(api.volumeCreate, {"size": MiB, "template": "one-ds-1"})
    assert unnamed.name == f"~{unnamed.globalId}"
    strict(api.volumeDelete, unnamed.name)

    strict(api.volumeUpdate, "one-img-1", {"size": 16 * MiB, "tags": {"nvm": "5", "virt": ""}})
    assert api_error(lambda: api.volumeUpdate("one-img-1", {"size": 4 * MiB})).name == "invalidParam"
    strict(api.volumeUpdate, "one-img-1", {"size": 12 * MiB, "shrinkOk": True})
    strict(api.volumeUpdate, "one-img-1", {"sizeAdd": 4 * MiB, "rename": "one-img-2"})
    vol = strict(api.volumeList, "one-img-2")[0]
    assert (vol.size, vol.tags) == (16 * MiB, {"nvm": "5"})
    assert os.path.getsize(sim.volume_path("one-img-2") or "") == 16 * MiB

    # snapshots
    snap = strict(api.snapshotCreate, "one-img-2", {"name": "one-img-2-snap0", "tags": {"k": "v"}})
    assert snap.snapshotGlobalId and snap.autoName is None
    anon = strict(api.snapshotCreate, "one-img-2", {})
    assert anon.autoName == f"one-img-2@{anon.snapshotVisibleVolumeId}"
    listed = {s.name: s for s in strict(api.snapshotsList)}
    assert listed["one-img-2-snap0"].onVolume == "one-img-2" and listed["one-img-2-snap0"].tags == {"k": "v"}
    assert listed[anon.autoName].autoName and listed[anon.autoName].parentName == "one-img-2-snap0"
    assert strict(api.volumeList, "one-img-2")[0].parentName == anon.autoName
    assert [s.name for s in strict(api.volumeListSnapshots, "one-img-2")] == [anon.autoName, "one-img-2-snap0"]
    assert strict(api.snapshotList, "one-img-2-snap0")[0].globalId == snap.snapshotGlobalId
    assert strict(api.snapshotDescribe, "one-img-2-snap0").objectsCount == 1
    assert strict(api.snapshotInfo, f"~{snap.snapshotGlobalId}").disksCount == 2
    strict(api.snapshotUpdate, anon.autoName, {"rename": "one-img-2-snap1", "tags": {"a": "b"}})
    assert strict(api.snapshotList, "one-img-2-snap1")[0].autoName is False

    # clones, revert, freeze
    strict(api.volumeCreate, {"name": "clone-p", "parent": "one-img-2-snap0", "size": 32 * MiB})
    strict(api.volumeCreate, {"name": "clone-b", "baseOn": "one-img-2"})
    assert strict(api.volumeList, "clone-p")[0].parentName == "one-img-2-snap0"
    strict(api.volumeUpdate, "one-img-2", {"size": 24 * MiB})
    strict(api.volumeRevert, "one-img-2", {"toSnapshot": "one-img-2-snap0"})
    vol = strict(api.volumeList, "one-img-2")[0]
    assert (vol.size, vol.parentName) == (16 * MiB, "one-img-2-snap0")
    assert api_error(lambda: api.volumeRevert("clone-p", {"toSnapshot": "one-img-2-snap1"})).name == "invalidParam"
    strict(api.volumeFreeze, "clone-b")
    assert "clone-b" in {s.name for s in strict(api.snapshotsList)}

    # group snapshot, spaces, templates status
    group = strict(api.snapshotCreateGroup, {"volumes": [{"volume": "one-img-2"}, {"volume": "clone-p", "name": "g"}]})
    assert [(r.volume, r.snapshot) for r in group.snapshots][1] == ("clone-p", "g")
    assert {v.name for v in strict(api.volumesSpace)} == {"one-img-2", "clone-p"}
    assert {s.name for s in strict(api.snapshotsSpace)} >= {"g", "clone-b", "one-img-2-snap0"}
    status = strict(api.volumeTemplatesStatus)[0]
    assert (status.name, status.volumesCount, status.snapshotsCount) == ("one-ds-1", 2, 5)

    # attachments and clients
    strict(api.volumesReassign, [{"volume": "one-img-2", "rw": [1]}, {"snapshot": "g", "ro": [1, 2]}])
    strict(api.volumesReassignWait, {"reassign": [{"volume": "clone-p", "ro": [2]}], "attachTimeout": 20})
    atts = {(a.volume, a.client): (a.rights, a.snapshot) for a in strict(api.attachmentsList)}
    assert atts == {
        ("one-img-2", 1): ("rw", False),
        ("g", 1): ("ro", True),
        ("g", 2): ("ro", True),
        ("clone-p", 2): ("ro", False),
    }
    assert set(strict(api.servicesList).clients) == {1, 2}
    assert {c.id for c in strict(api.clientsConfigDump)} == {1, 2}
    assert strict(api.clientConfigWait, 2)[0].configStatus == "ok"
    strict(
        api.volumesReassignWait,
        {"reassign": [{"volume": "one-img-2", "detach": "all"}, {"snapshot": "g", "detach": [1, 2]}]},
    )
    strict(api.volumesReassign, [{"volume": "clone-p", "detach": "all", "force": True}])
    assert strict(api.attachmentsList) == []

    # remote locations and backups
    sim.add_location("remote-a")
    assert [loc.name for loc in strict(api.locationsList)["locations"]] == ["remote-a"]
    assert strict(api.volumeBackup, {"volume": "one-img-2", "location": "remote-a"}).remoteId

    # deletes
    strict(api.snapshotDeleteById, group.snapshots[0].snapshotGlobalId)
    strict(api.snapshotDelete, "one-img-2-snap0")  # has children: they are rebased
    assert strict(api.volumeList, "one-img-2")[0].parentName == ""
    for name in ("one-img-2", "clone-p"):
        strict(api.volumeDelete, name)
    for snap_name in [s.name for s in strict(api.snapshotsList)]:
        strict(api.snapshotDelete, snap_name)
    strict(api.volumeTemplateDelete, "one-ds-1")
    strict(api.placementGroupDelete, "ssd")
    assert api_error(lambda: api.volumeDelete("one-img-2")).name == "objectDoesNotExist"

    inv = sim.inventory()
    assert inv["volumes"] == inv["snapshots"] == {} and inv["attachments"] == [] and inv["loops"] == []
    assert not list((sim.root / "data").iterdir())
    assert {m for m, _body in sim.calls} == set(ROUTES)


def test_multicluster_paths_and_curl_style_requests(sim: StorPoolSim) -> None:
    mc = spapi.Api(sim.host, sim.port, TOKEN, multiCluster=True, transientRetries=0)
    strict(mc.volumeCreate, {"name": "v", "size": MiB})
    assert [v.name for v in strict(mc.volumesList)] == ["v"]
    assert sim.requests[-1]["path"] == "/ctrl/1.0/MultiCluster/VolumesList"
    # addon-storpool's way: curl -d (form content type) and a check of .data.ok
    body = json.dumps({"volumes": [{"volume": "v", "name": "v-snap"}], "tags": {"nvm": "1"}}).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, reply = http_call(sim, "POST", "VolumesGroupSnapshot", raw=body, headers=form)
    assert status == 200 and reply["data"]["ok"] is True and reply["data"]["snapshots"][0]["snapshot"] == "v-snap"
    reassign = {"attachTimeout": 20, "reassign": [{"volume": "v", "rw": [7]}]}
    status, reply = http_call(sim, "POST", "VolumesReassignWait", raw=json.dumps(reassign).encode(), headers=form)
    assert status == 200 and reply["data"]["ok"] is True
    status, reply = http_call(sim, "POST", "VolumesReassignWait", {"reassign": [{"volume": "v", "detach": [7]}]})
    assert status == 200
    # GET with ?json= as spapi sends JSON with GET requests
    status, reply = http_call(sim, "GET", "VolumesList?json=%7B%7D")
    assert status == 200 and len(reply["data"]) == 1


def test_data_written_through_a_device_reaches_snapshot_clones(sim: StorPoolSim, api: spapi.Api) -> None:
    strict(api.volumeCreate, {"name": "disk", "size": 64 * MiB})
    strict(api.volumesReassignWait, {"reassign": [{"volume": "disk", "rw": [1]}]})
    dev = sim.device("disk", 1)
    assert dev and os.path.realpath(sim.device_dir / "disk") == dev
    first = os.urandom(4096)
    write_at(dev, 5 * MiB, first)
    strict(api.snapshotCreate, "disk", {"name": "disk-snap0"})
    second = os.urandom(4096)
    write_at(dev, 5 * MiB, second)  # after the snapshot: must not show in its clones

    strict(api.volumeCreate, {"name": "from-snap", "parent": "disk-snap0"})
    strict(api.volumeCreate, {"name": "from-vol", "baseOn": "disk"})
    strict(
        api.volumesReassignWait,
        {
            "reassign": [
                {"volume": "from-snap", "ro": [2]},
                {"volume": "from-vol", "rw": [2]},
                {"snapshot": "disk-snap0", "ro": [2]},
            ]
        },
    )
    assert read_at(sim.device("from-snap", 2) or "", 5 * MiB, 4096) == first
    assert read_at(sim.device("disk-snap0", 2) or "", 5 * MiB, 4096) == first
    assert read_at(sim.device("from-vol", 2) or "", 5 * MiB, 4096) == second
    write_at(sim.device("from-vol", 2) or "", 0, b"x" * 512)  # copies are independent
    assert read_at(dev, 0, 512) == b"\0" * 512
    space = {v.name: v for v in strict(api.volumesSpace)}
    assert 4096 <= space["disk"].storedSize <= 64 * MiB and space["disk"].spaceUsed == space["disk"].storedSize
    strict(api.volumesReassignWait, {"reassign": [{"volume": n, "detach": "all"} for n in ("disk", "from-snap")]})
    strict(api.volumesReassignWait, {"reassign": [{"volume": "from-vol", "detach": "all"}]})
    strict(api.volumesReassignWait, {"reassign": [{"snapshot": "disk-snap0", "detach": "all"}]})
    assert sim.inventory()["loops"] == []


def test_per_client_links_share_one_device_per_rights(sim: StorPoolSim, api: spapi.Api, tmp_path: Path) -> None:
    host1 = sim.add_client(1, tmp_path / "h1", hostname="node1")
    host2 = sim.add_client(2, tmp_path / "h2", byid_dir=tmp_path / "h2-byid", hostname="node2")
    sim.add_client(3, tmp_path / "h3")
    assert sim.client_for_host("node2") == 2 and sim.client_for_host("nope") is None
    gid = strict(api.volumeCreate, {"name": "one-sys-5-0-raw", "size": 4 * MiB}).globalId
    # live migration: both hosts rw at once, one loop device
    strict(api.volumesReassignWait, {"reassign": [{"volume": "one-sys-5-0-raw", "rw": [1, 2]}]})
    dev = os.readlink(host1 / "one-sys-5-0-raw")
    assert os.readlink(host2 / "one-sys-5-0-raw") == dev == os.readlink(tmp_path / "h2-byid" / gid)
    assert not (tmp_path / "h3" / "one-sys-5-0-raw").exists()
    # a read-only attachment is another device, refusing writes
    strict(api.volumesReassign, [{"volume": "one-sys-5-0-raw", "ro": [3]}])
    ro_dev = os.readlink(tmp_path / "h3" / "one-sys-5-0-raw")
    assert ro_dev != dev and len(sim.inventory()["loops"]) == 2
    with pytest.raises(PermissionError):
        write_at(ro_dev, 0, b"x" * 512)
    # detaching one host removes only its link; the device stays while another client has it
    strict(api.volumesReassignWait, {"reassign": [{"volume": "one-sys-5-0-raw", "detach": [1], "force": True}]})
    assert not os.path.lexists(host1 / "one-sys-5-0-raw")
    assert os.readlink(host2 / "one-sys-5-0-raw") == dev and Path(dev).exists()
    assert dev in sim.inventory()["loops"]
    # rw -> ro on client 2 moves its link to the ro device and frees the rw one
    strict(api.volumesReassignWait, {"reassign": [{"volume": "one-sys-5-0-raw", "ro": [2]}]})
    assert os.readlink(host2 / "one-sys-5-0-raw") == ro_dev and sim.inventory()["loops"] == [ro_dev]
    # detach "all" except the clients the same entry attaches (storpool-csi's publish)
    strict(api.volumesReassignWait, {"reassign": [{"volume": "one-sys-5-0-raw", "rw": [1], "detach": "all"}]})
    assert {(a.client, a.rights) for a in strict(api.attachmentsList)} == {(1, "rw")}
    assert not os.path.lexists(host2 / "one-sys-5-0-raw") and not os.path.lexists(tmp_path / "h2-byid" / gid)
    strict(api.volumesReassignWait, {"reassign": [{"volume": "one-sys-5-0-raw", "detach": "all"}]})
    assert sim.inventory()["loops"] == [] and not os.path.lexists(host1 / "one-sys-5-0-raw")

    # two clients sharing one device dir: the link stays until both detach
    strict(api.volumesReassignWait, {"reassign": [{"volume": "one-sys-5-0-raw", "rw": [10, 11]}]})
    shared = sim.device_dir / "one-sys-5-0-raw"
    strict(api.volumesReassignWait, {"reassign": [{"volume": "one-sys-5-0-raw", "detach": [10]}]})
    assert shared.is_symlink()
    strict(api.volumesReassignWait, {"reassign": [{"volume": "one-sys-5-0-raw", "detach": [11]}]})
    assert not os.path.lexists(shared)

    # errors: snapshots are read-only; bad client ids; both ro and rw
    strict(api.snapshotCreate, "one-sys-5-0-raw", {"name": "s"})
    _status, reply = http_call(sim, "POST", "VolumesReassign", [{"snapshot": "s", "rw": [1]}])
    assert reply["error"]["name"] == "invalidParam"
    for entry in ({"volume": "one-sys-5-0-raw", "rw": [0]}, {"volume": "one-sys-5-0-raw", "rw": [1], "ro": [1]}):
        _status, reply = http_call(sim, "POST", "VolumesReassign", [entry])
        assert reply["error"]["name"] == "invalidParam"
    _status, reply = http_call(sim, "POST", "VolumesReassign", [{"volume": "nope", "rw": [1]}])
    assert reply["error"]["name"] == "objectDoesNotExist"


def test_unknown_clients_can_be_refused(root: Path) -> None:
    with StorPoolSim(root, token=TOKEN, auto_clients=False) as sim:
        api = spapi.Api(sim.host, sim.port, TOKEN, transientRetries=0)
        strict(api.volumeCreate, {"name": "v", "size": MiB})
        err = api_error(lambda: api.volumesReassignWait({"reassign": [{"volume": "v", "rw": [9]}]}))
        assert (err.name, err.desc) == ("invalidParam", "No such client registered")
        assert api_error(lambda: api.clientConfigWait(9)).name == "objectDoesNotExist"
        sim.add_client(9, root / "h9")
        strict(api.volumesReassignWait, {"reassign": [{"volume": "v", "rw": [9]}]})
        assert (root / "h9" / "v").is_symlink()


def test_open_devices_are_busy_unless_forced(sim: StorPoolSim, api: spapi.Api) -> None:
    strict(api.volumeCreate, {"name": "v", "size": MiB})
    strict(api.volumesReassignWait, {"reassign": [{"volume": "v", "rw": [1]}]})
    dev = sim.device("v", 1) or ""
    fd = os.open(dev, os.O_RDONLY)
    try:
        err = api_error(lambda: api.volumesReassignWait({"reassign": [{"volume": "v", "detach": [1]}]}))
        assert err.name == "busy" and "is open at client 1" in err.desc
        assert api_error(lambda: api.volumeDelete("v")).name == "busy"  # attached
        assert api_error(lambda: api.volumeFreeze("v")).name == "busy"
        strict(api.volumesReassignWait, {"reassign": [{"volume": "v", "detach": "all", "force": True}]})
        assert not (sim.device_dir / "v").exists()
    finally:
        os.close(fd)
    deadline = time.monotonic() + 5
    # exact line match: "/dev/loop1" is a prefix of "/dev/loop10" another test may hold
    while any(line.startswith(dev + ":") for line in
              subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()):
        assert time.monotonic() < deadline, "the force-detached device was never released"
        time.sleep(0.05)
    strict(api.volumesReassignWait, {"reassign": [{"volume": "v", "rw": [1]}]})
    strict(api.volumesReassignWait, {"reassign": [{"volume": "v", "detach": [1]}]})  # not open: fine
    strict(api.volumeDelete, "v")


def test_attached_objects_resize_rename_and_refuse_delete(sim: StorPoolSim, api: spapi.Api) -> None:
    strict(api.volumeCreate, {"name": "v", "size": 8 * MiB})
    strict(api.snapshotCreate, "v", {"name": "v-s"})
    strict(api.volumesReassignWait, {"reassign": [{"volume": "v", "rw": [1]}, {"snapshot": "v-s", "ro": [1]}]})
    dev = sim.device("v", 1) or ""
    strict(api.volumeUpdate, "v", {"size": 20 * MiB})
    assert dev_size(dev) == 20 * MiB  # grown online
    strict(api.volumeUpdate, "v", {"rename": "w"})
    assert os.readlink(sim.device_dir / "w") == dev and not os.path.lexists(sim.device_dir / "v")
    assert api_error(lambda: api.volumeDelete("w")).name == "busy"
    assert api_error(lambda: api.snapshotDelete("v-s")).name == "busy"
    assert api_error(lambda: api.volumeRevert("w", {"toSnapshot": "v-s"})).name == "busy"
    strict(api.snapshotUpdate, "v-s", {"rename": "w-s"})
    assert (sim.device_dir / "w-s").is_symlink() and not os.path.lexists(sim.device_dir / "v-s")
    strict(
        api.volumesReassignWait, {"reassign": [{"volume": "w", "detach": "all"}, {"snapshot": "w-s", "detach": "all"}]}
    )
    strict(api.volumeRevert, "w", {"toSnapshot": "w-s"})
    assert strict(api.volumeList, "w")[0].size == 8 * MiB
    strict(api.volumeDelete, "w")
    assert strict(api.snapshotList, "w-s")[0].onVolume == "-"


def test_fault_injection(sim: StorPoolSim, api: spapi.Api) -> None:
    def count(call: str) -> int:
        return sum(1 for m, _b in sim.calls if m == call)

    sim.fail("VolumeCreate", "error", name="objectExists", descr="injected")
    err = api_error(lambda: api.volumeCreate({"name": "a", "size": MiB}))
    assert (err.name, err.desc, err.transient, err.status) == ("objectExists", "injected", False, 500)
    assert "a" not in sim.inventory()["volumes"]

    sim.fail("VolumeCreate", "transient", times=2)
    strict(api.volumeCreate, {"name": "a", "size": MiB})  # spapi retries transient errors
    assert count("VolumeCreate") == 4
    sim.fail("VolumesList", "transient")
    status, reply = http_call(sim, "GET", "VolumesList")
    assert status == 500 and reply["error"] == {
        "name": "busy",
        "descr": "simulated transient failure of VolumesList",
        "transient": True,
    }

    sim.fail("VolumesList", "drop")
    with pytest.raises(http.client.RemoteDisconnected):
        http_call(sim, "GET", "VolumesList")
    sim.fail("VolumesList", "drop")
    assert [v.name for v in strict(api.volumesList)] == ["a"]  # a dropped connection is retried

    sim.fail("AttachmentsList", "delay", delay=0.3)
    started = time.monotonic()
    strict(api.attachmentsList)
    assert time.monotonic() - started >= 0.3

    # a lost reply: the call ran, the client retries and meets its own result
    sim.fail("VolumeCreate", "drop", apply=True)
    err = api_error(lambda: api.volumeCreate({"name": "b", "size": MiB}))
    assert err.name == "objectExists" and "b" in sim.inventory()["volumes"]

    fault = sim.fail("*", "error", times=None, skip=1, name="clusterNotReady")
    strict(api.volumesList)
    for _ in range(3):
        assert api_error(api.snapshotsList).name == "clusterNotReady"
    assert fault.fired == 3
    sim.clear_faults()
    strict(api.snapshotsList)
    with pytest.raises(ValueError):
        sim.fail("VolumesList", "explode")


def test_volume_backup_copies_the_data_to_a_remote_location(sim: StorPoolSim, api: spapi.Api) -> None:
    lid = sim.add_location("remote-a")
    assert sim.add_location("dr.site:2", "zz") == "zz"
    for bad in ("a b", "list", "x" * 64):
        with pytest.raises(ValueError):
            sim.add_location(bad)
    with pytest.raises(ValueError):
        sim.add_location("remote-b", "sim")  # the simulator's own location id
    listed = strict(api.locationsList)["locations"]
    assert [(loc.name, loc.id) for loc in listed] == [("remote-a", lid), ("dr.site:2", "zz")]

    strict(api.volumeCreate, {"name": "v", "size": 8 * MiB, "tags": {"virt": "one"}})
    strict(api.volumesReassignWait, {"reassign": [{"volume": "v", "rw": [1]}]})
    dev = sim.device("v", 1) or ""
    first = os.urandom(64 * 1024)
    write_at(dev, 3 * MiB, first)
    before = sim.inventory()
    reply = strict(api.volumeBackup, {"volume": "v", "location": "remote-a", "tags": {"k": "v1"}})
    assert reply.ok and reply.remoteId.startswith(f"{lid}.") and reply.autoName is None
    write_at(dev, 3 * MiB, os.urandom(4096))  # after the backup: not in it
    backups = sim.inventory()["backups"]
    assert backups["dr.site:2"] == []
    (entry,) = backups["remote-a"]
    assert {k: entry[k] for k in ("name", "location", "size", "tags", "remoteId")} == {
        "name": "v", "location": "remote-a", "size": 8 * MiB, "tags": {"k": "v1"}, "remoteId": reply.remoteId}
    copy = Path(entry["path"])
    assert copy.parent == sim.root / "remote" / "remote-a" and os.path.getsize(copy) == 8 * MiB
    with open(copy, "rb") as fh:
        fh.seek(3 * MiB)
        assert fh.read(len(first)) == first
    # the cluster itself did not change: no snapshot, the volume and its attachment stay
    after = sim.inventory()
    assert after["volumes"].keys() == before["volumes"].keys() and after["snapshots"] == {}
    assert after["attachments"] == before["attachments"]

    # the MultiCluster form, by global id
    mc = spapi.Api(sim.host, sim.port, TOKEN, multiCluster=True, transientRetries=0)
    gid = strict(api.volumeList, "v")[0].globalId
    second = strict(mc.volumeBackup, {"volume": f"~{gid}", "location": "dr.site:2"})
    assert sim.requests[-1]["path"] == "/ctrl/1.0/MultiCluster/VolumeBackup"
    assert second.remoteId.startswith("zz.") and len(sim.inventory()["backups"]["dr.site:2"]) == 1

    # errors: nothing is recorded
    err = api_error(lambda: api.volumeBackup({"volume": "v", "location": "nowhere"}))
    assert (err.name, err.desc) == ("objectDoesNotExist", "Location nowhere does not exist")
    assert api_error(lambda: api.volumeBackup({"volume": "nope", "location": "remote-a"})).name == "objectDoesNotExist"
    for body in ({"volume": "v", "location": "a b"}, {"volume": "v"}, {"volume": "v", "location": "remote-a", "x": 1},
                 {"volume": "v", "location": "remote-a", "tags": {"k": "a b"}}):
        assert http_call(sim, "POST", "VolumeBackup", body)[1]["error"]["name"] == "invalidParam", body
    assert http_call(sim, "GET", "VolumeBackup")[0] == 405
    sim.bulk_create(1, MiB, prefix="bulk")
    assert api_error(lambda: api.volumeBackup({"volume": "bulk-0", "location": "remote-a"})).name == "invalidParam"

    # fault injection as for every call
    sim.fail("VolumeBackup")
    assert api_error(lambda: api.volumeBackup({"volume": "v", "location": "remote-a"})).name == "invalidParam"
    sim.fail("VolumeBackup", "transient")
    strict(api.volumeBackup, {"volume": "v", "location": "remote-a"})  # spapi retries it
    sim.fail("VolumeBackup", "error", apply=True)  # done, but the reply says it failed
    api_error(lambda: api.volumeBackup({"volume": "v", "location": "remote-a"}))
    sim.fail("_copy")  # the data copy fails: no backup, no file
    assert api_error(lambda: api.volumeBackup({"volume": "v", "location": "remote-a"})).name == "invalidParam"
    assert len(sim.inventory()["backups"]["remote-a"]) == 3
    assert len(list((sim.root / "remote" / "remote-a").iterdir())) == 3
    strict(api.volumesReassignWait, {"reassign": [{"volume": "v", "detach": "all"}]})


def test_delete_after_and_anonymous_snapshots(sim: StorPoolSim, api: spapi.Api) -> None:
    strict(api.volumeCreate, {"name": "one-img-7", "size": MiB})
    # addon-storpool's delayed delete: an anonymous snapshot with deleteAfter, then delete
    reply = strict(api.snapshotCreate, "one-img-7", {"deleteAfter": 48 * 3600})
    snap = strict(api.snapshotList, reply.autoName)[0]
    assert snap.autoName and abs(snap.targetDeleteDate - (sim.now() + 48 * 3600)) < 5
    strict(api.volumeDelete, "one-img-7")
    assert strict(api.snapshotList, reply.autoName)[0].onVolume == "-"
    sim.advance(48 * 3600 - 10)
    assert reply.autoName in sim.inventory()["snapshots"]
    sim.advance(20)
    assert reply.autoName not in sim.inventory()["snapshots"]
    assert api_error(lambda: api.snapshotList(reply.autoName)).name == "objectDoesNotExist"

    strict(api.volumeCreate, {"name": "v", "size": MiB})
    strict(api.snapshotCreate, "v", {"name": "keep", "targetDeleteDate": int(sim.now()) + 60})
    strict(api.snapshotUpdate, "keep", {"deleteAfter": 0})  # 0 discards the date
    strict(api.snapshotCreate, "v", {"name": "attached", "deleteAfter": 60})
    strict(api.volumesReassignWait, {"reassign": [{"snapshot": "attached", "ro": [1]}]})
    sim.advance(120)
    assert {"keep", "attached"} <= set(sim.inventory()["snapshots"])  # attached ones wait
    strict(api.volumesReassignWait, {"reassign": [{"snapshot": "attached", "detach": "all"}]})
    assert "attached" not in {s.name for s in strict(api.snapshotsList)}
    err = api_error(lambda: api.snapshotCreate("v", {"targetDeleteDate": int(sim.now()) - 10}))
    assert err.name == "invalidParam"
    strict(api.volumeFreeze, "v", {"deleteAfter": 30})
    sim.advance(31)
    assert "v" not in sim.inventory()["snapshots"]


def test_bound_snapshots_go_with_their_last_child(sim: StorPoolSim, api: spapi.Api) -> None:
    strict(api.volumeCreate, {"name": "base", "size": MiB})
    strict(api.snapshotCreate, "base", {"name": "img", "bind": True})
    strict(api.volumeCreate, {"name": "clone", "parent": "img"})
    strict(api.volumeDelete, "base")
    assert "img" in sim.inventory()["snapshots"]
    strict(api.volumeDelete, "clone")
    assert "img" not in sim.inventory()["snapshots"]
    assert not list((sim.root / "data").iterdir())


def test_group_snapshot_is_all_or_nothing(sim: StorPoolSim, api: spapi.Api) -> None:
    for name in ("one-img-1", "one-sys-3-1-raw", "one-sys-3-2-iso"):
        strict(api.volumeCreate, {"name": name, "size": 2 * MiB})
        (sim.volume_path(name) or Path()).write_bytes(name.encode().ljust(2 * MiB, b"\0"))
    files = set((sim.root / "data").iterdir())
    before = sim.inventory()

    spec: dict[str, Any] = {
        "volumes": [
            {"volume": "one-img-1", "name": "one-img-1-ONESNAP-0"},
            {"volume": "one-sys-3-1-raw", "name": "one-sys-3-1-raw-ONESNAP-0", "tags": {"diskid": "1"}},
            {"volume": "nope", "name": "nope-ONESNAP-0"},
        ],
        "tags": {"nvm": "3", "diskid": "x"},
    }
    assert api_error(lambda: api.snapshotCreateGroup(spec)).name == "objectDoesNotExist"
    spec["volumes"][2] = {"volume": "one-sys-3-2-iso", "name": "one-img-1"}  # taken by a volume
    assert api_error(lambda: api.snapshotCreateGroup(spec)).name == "objectExists"
    spec["volumes"][2] = {"volume": "one-sys-3-2-iso", "name": "one-sys-3-2-iso-ONESNAP-0"}
    sim.fail("_copy", "error", skip=2, name="internalError")  # the third data copy fails
    assert api_error(lambda: api.snapshotCreateGroup(spec)).name == "internalError"
    assert sim.inventory()["snapshots"] == {} and sim.inventory()["volumes"] == before["volumes"]
    assert set((sim.root / "data").iterdir()) == files

    result = strict(api.snapshotCreateGroup, spec)
    assert [r.snapshot for r in result.snapshots] == [v["name"] for v in spec["volumes"]]
    snaps = sim.inventory()["snapshots"]
    assert snaps["one-sys-3-1-raw-ONESNAP-0"]["tags"] == {"nvm": "3", "diskid": "1"}
    assert snaps["one-img-1-ONESNAP-0"]["tags"] == {"nvm": "3", "diskid": "x"}
    for vol in ("one-img-1", "one-sys-3-1-raw", "one-sys-3-2-iso"):
        snap = f"{vol}-ONESNAP-0"
        assert sim.inventory()["volumes"][vol]["parent"] == snap
        assert Path(snaps[snap]["path"]).read_bytes()[: len(vol)] == vol.encode()


def test_concurrent_actions(sim: StorPoolSim) -> None:
    errors: list[BaseException] = []

    def action(i: int) -> None:
        try:
            api = spapi.Api(sim.host, sim.port, TOKEN, timeout=30, transientRetries=0)
            name = f"one-sys-{i}-0-raw"
            strict(api.volumeCreate, {"name": name, "size": 4 * MiB, "tags": {"nvm": str(i)}})
            strict(api.volumesReassignWait, {"reassign": [{"volume": name, "rw": [1 + i % 3]}]})
            write_at(sim.device(name) or "", 0, name.encode().ljust(512, b"\0"))
            strict(api.snapshotCreate, name, {"name": f"{name}-snap"})
            strict(api.volumesList)
            strict(api.volumesReassignWait, {"reassign": [{"volume": name, "detach": "all"}]})
            strict(api.volumeCreate, {"name": f"{name}-copy", "parent": f"{name}-snap"})
            assert (sim.volume_path(f"{name}-copy") or Path()).read_bytes()[: len(name)] == name.encode()
            for vol in (name, f"{name}-copy"):
                strict(api.volumeDelete, vol)
            strict(api.snapshotDelete, f"{name}-snap")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=action, args=(i,)) for i in range(15)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    inv = sim.inventory()
    assert inv["volumes"] == inv["snapshots"] == {} and inv["loops"] == [] and inv["attachments"] == []
    assert len(sim.calls) == 15 * 9


def test_ten_thousand_volumes_answer_fast(sim: StorPoolSim, api: spapi.Api) -> None:
    names = sim.bulk_create(10_000, 10 * GiB, snapshots=1, stored=GiB)
    assert len(names) == 10_000 and names[0] == "bulk-0"
    for call in ("VolumesList", "VolumesSpace", "SnapshotsSpace"):
        started = time.monotonic()
        status, reply = http_call(sim, "GET", call)
        elapsed = time.monotonic() - started
        assert status == 200 and len(reply["data"]) == 10_000
        assert elapsed < 2.0, f"{call} took {elapsed:.2f}s"
    space = strict(api.volumesSpace)
    assert space[0].storedSize == GiB and space[0].parentName == "bulk-0-snap0"
    snaps = strict(api.snapshotsSpace)
    assert snaps[0].name == "bulk-0-snap0" and snaps[0].onVolume == "bulk-0"
    err = api_error(lambda: api.volumesReassign([{"volume": "bulk-1", "rw": [1]}]))
    assert err.name == "invalidParam" and "bulk_create" in err.desc
    strict(api.volumeDelete, "bulk-1")


def test_templates_status_reports_capacity(root: Path) -> None:
    with StorPoolSim(root, token=TOKEN, capacity=60 * GiB) as sim:
        api = spapi.Api(sim.host, sim.port, TOKEN, transientRetries=0)
        strict(api.volumeTemplateCreate, {"name": "r2", "replication": 2})
        strict(api.volumeTemplateCreate, {"name": "any"})
        strict(api.volumeCreate, {"name": "v", "size": 64 * MiB, "template": "r2"})
        (sim.volume_path("v") or Path()).write_bytes(b"\1" * 4 * MiB)
        os.truncate(sim.volume_path("v") or "", 64 * MiB)
        by_name = {t.name: t for t in strict(api.volumeTemplatesStatus)}
        r2 = by_name["r2"]
        assert (r2.volumesCount, r2.size, r2.totalSize, r2.storedSize, r2.onDiskSize) == (
            1,
            64 * MiB,
            128 * MiB,
            4 * MiB,
            8 * MiB,
        )
        assert r2.stored.capacity == 30 * GiB and r2.stored.free == (60 * GiB - 8 * MiB) // 2
        assert r2.stored.internal.u2 == 0 and r2.capacityPlaceAll == 60 * GiB
        assert by_name["any"].replication == "-" and by_name["any"].stored.capacity == 20 * GiB
        assert strict(api.volumeTemplateDescribe, "any").size == "-"
        assert api_error(lambda: api.volumeTemplateDelete("r2")).name == "invalidParam"  # in use


def test_stop_releases_only_what_it_made(root: Path, tmp_path: Path) -> None:
    before = _our_loops(tmp_path)  # `losetup -a`, limited to this test's files (others may run)
    foreign = root / "dev" / "storpool" / "not-ours"
    foreign.parent.mkdir(parents=True)
    foreign.symlink_to("/dev/null")
    sim = StorPoolSim(root, token=TOKEN).start()
    api = spapi.Api(sim.host, sim.port, TOKEN, transientRetries=0)
    sim.add_client(2, tmp_path / "h2")
    strict(api.volumeCreate, {"name": "a", "size": MiB})
    strict(api.snapshotCreate, "a", {"name": "a-s"})
    strict(api.volumesReassignWait, {"reassign": [{"volume": "a", "rw": [1, 2]}, {"snapshot": "a-s", "ro": [1]}]})
    assert len(_our_loops(root)) == 2
    with pytest.raises(ValueError):
        sim.add_client(2, tmp_path / "elsewhere")  # it has attachments
    sim.stop()
    sim.stop()  # idempotent
    assert _our_loops(tmp_path) == before == set()
    assert sorted(p.name for p in (root / "dev" / "storpool").iterdir()) == ["not-ours"]
    assert list((tmp_path / "h2").iterdir()) == []
    assert (root / "data").is_dir() and len(list((root / "data").iterdir())) == 2  # data stays
    with pytest.raises(RuntimeError):
        _ = sim.port
