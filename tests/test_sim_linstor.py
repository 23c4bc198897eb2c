"""Tests of the LINSTOR controller REST API simulator (tests/sim/linstor.py), which is not LINSTOR.

Every endpoint is driven through LINSTOR's own Python client (``python-linstor``: ``Linstor``,
``MultiLinstor``, ``Resource``, ``ResourceGroup``), whose parsing must accept every reply, and
every reply the simulator sends during these tests, and every request python-linstor sends it,
is validated against this project's LINSTOR contract (``tests/fixtures/linstor-contract``: JSON
Schemas written from the facts of the controller's REST API documentation) - strictly: an
object may not carry a field the contract does not define, and int32/int64 fields must fit. Volumes are
real loop devices, so these tests need root (as the project's test machines run).
"""

from __future__ import annotations

import copy
import datetime as dt
import http.client
import inspect
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import linstor
import pytest
from linstor import sharedconsts as consts
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from sim import linstor as simmod
from sim.linstor import ROUTES, LinstorSim

ROOT = Path(__file__).resolve().parent.parent
KiB = 1024
MiB = 2**20
SIZE_KIB = 4096  # 4 MiB volumes keep copies cheap

CONTRACT_DIR = ROOT / "tests" / "fixtures" / "linstor-contract"

# python-linstor route names hit with python-linstor's own client during this module, and the
# tests whose simulator replies were checked
EXERCISED: set[str] = set()
CHECKED: set[str] = set()


# ----------------------------------------------------------------------------------------------
# our LINSTOR contract as a strict validator


class Contract:
    """Validates request and reply bodies against this project's LINSTOR contract
    (tests/fixtures/linstor-contract: JSON Schemas of the endpoints the simulator serves, the
    requests python-linstor sends and the replies it parses).

    Strict: every object schema with ``properties`` is closed (``additionalProperties: false``
    unless it says otherwise), so the simulator cannot invent fields; formats int32/int64 are
    range-checked and date-time must parse.
    """

    BASE = "urn:one-tweaks:linstor-contract/"

    def __init__(self, directory: Path) -> None:
        objects = json.loads((directory / "objects.schema.json").read_text())
        self.routes: list[dict[str, Any]] = json.loads((directory / "routes.json").read_text())["routes"]
        strict = self._rebase(copy.deepcopy(objects))
        self._close(strict)
        strict["$id"] = self.BASE + "objects.schema.json"
        self.registry: Registry[Any] = Registry().with_resource(
            strict["$id"], Resource(contents=strict, specification=DRAFT202012)
        )
        self.formats = jsonschema.FormatChecker()
        self.formats.checks("int32")(lambda v: not isinstance(v, int) or -(2**31) <= v < 2**31)
        self.formats.checks("int64")(lambda v: not isinstance(v, int) or -(2**63) <= v < 2**63)
        self.formats.checks("date-time", raises=ValueError)(
            lambda v: not isinstance(v, str) or bool(dt.datetime.fromisoformat(v))
        )
        literal = sorted({r["path"] for r in self.routes}, key=lambda t: (t.count("{"), -len(t)))
        self.templates = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", t) + "$"), t) for t in literal]

    # -- schema transformation ------------------------------------------------------------------

    def _close(self, node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and isinstance(node["properties"], dict) and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                self._close(value)
        elif isinstance(node, list):
            for value in node:
                self._close(value)

    def _rebase(self, node: Any) -> Any:
        """``objects.schema.json#/...`` and ``#/...`` references as absolute URIs."""
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                node["$ref"] = self.BASE + "objects.schema.json" + ref.partition("#")[1] + ref.partition("#")[2]
            for value in node.values():
                self._rebase(value)
        elif isinstance(node, list):
            for value in node:
                self._rebase(value)
        return node

    # -- lookups --------------------------------------------------------------------------------

    def template(self, path: str) -> str | None:
        for regex, template in self.templates:
            if regex.match(path):
                return template
        return None

    def route(self, method: str, path: str) -> dict[str, Any]:
        template = self.template(path)
        if template is None:
            raise AssertionError(f"{method} {path} is not in the contract")
        for route in self.routes:
            if route["path"] == template and route["method"] == method:
                return route
        raise AssertionError(f"{method} {template} is not in the contract")

    def response_schema(self, method: str, path: str, status: int) -> dict[str, Any]:
        """The schema of a reply; a failure (>= 400) is an ApiCallRcList."""
        route = self.route(method, path)
        if status >= 400:
            return {"$ref": "objects.schema.json#/$defs/ApiCallRcList"}
        if status != route["status"]:
            raise AssertionError(f"{method} {route['path']} documents no {status} reply (only {route['status']})")
        return dict(route["reply"])

    def _errors(self, schema: dict[str, Any], body: Any, what: str) -> list[str]:
        closed = self._rebase(copy.deepcopy(schema))
        self._close(closed)
        validator = jsonschema.Draft202012Validator(closed, registry=self.registry, format_checker=self.formats)
        return [f"{what}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]

    def errors(self, method: str, path: str, status: int, body: Any) -> list[str]:
        return self._errors(self.response_schema(method, path, status), body, f"{method} {path} -> {status}")

    def request_errors(self, method: str, path: str, body: Any) -> list[str]:
        route = self.route(method, path)
        if route["request"] is None:
            return [] if body is None else [f"{method} {path}: a body where the contract has none"]
        return self._errors(route["request"], body, f"{method} {path} request")


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract(CONTRACT_DIR)


# ----------------------------------------------------------------------------------------------
# fixtures and helpers


def _our_loops(root: Path) -> set[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if str(root) in line}


def check_replies(sim: LinstorSim, contract: Contract) -> None:
    """Every reply the simulator sent, and every request python-linstor sent it, must
    validate against the contract."""
    problems: list[str] = []
    for record in list(sim.requests):
        if record["status"] is None:
            continue  # dropped on purpose
        if record["name"] == f"{record['method']} {record['path']}":  # no such endpoint
            assert record["status"] == 404
            continue
        problems += contract.errors(record["method"], record["path"], record["status"], record["reply"])
        if record["agent"].startswith("PythonLinstor"):
            EXERCISED.add(record["name"])
            problems += contract.request_errors(record["method"], record["path"], record["body"])
    assert not problems, "requests or replies that do not match the contract:\n" + "\n".join(problems[:20])


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The simulator's root dir; no loop device onto it may outlive the test."""
    path = tmp_path / "linstor"
    yield path
    assert not _our_loops(path), "loop devices leaked"


def add_cluster(sim: LinstorSim) -> None:
    sim.add_node("node-a", pool="thin", provider="LVM_THIN", props={"Aux/site": "s1", "Aux/rack": "r1"})
    sim.add_node("node-b", pool="thin", provider="LVM_THIN", props={"Aux/site": "s1", "Aux/rack": "r2"})
    sim.add_node("node-c", pool="thin", provider="LVM_THIN", props={"Aux/site": "s2", "Aux/rack": "r1"})
    sim.add_node("node-d", pool="thick", provider="LVM", props={"Aux/site": "s2"})  # no snapshots
    sim.add_node("host-1", pool=None)  # a compute node: diskless only


@pytest.fixture
def sim(root: Path, contract: Contract, request: pytest.FixtureRequest) -> Iterator[LinstorSim]:
    with LinstorSim(root) as running:
        add_cluster(running)
        yield running
        check_replies(running, contract)
        CHECKED.add(request.node.originalname)


@pytest.fixture
def lin(sim: LinstorSim) -> Iterator[linstor.Linstor]:
    with linstor.Linstor(sim.url, timeout=10) as client:
        yield client


def ok(replies: list[Any]) -> list[Any]:
    assert replies, "no reply"
    errors = [r for r in replies if isinstance(r, linstor.ApiCallResponse) and r.is_error()]
    assert not errors, "; ".join(str(e) for e in errors)
    return replies


def error(replies: list[Any]) -> linstor.ApiCallResponse:
    errors = [r for r in replies if r.is_error()]
    assert errors, f"expected an error, got {replies}"
    return errors[0]


def rc(code: int, op: int = 0, obj: int = 0) -> int:
    """A ret_code as the controller sends it: signed 64 bit."""
    value = code | op | obj
    return value - 2**64 if value >= 2**63 else value


def last_status(sim: LinstorSim, name: str) -> int:
    return next(r["status"] for r in reversed(sim.requests) if r["name"] == name)


def raw(sim: LinstorSim, method: str, path: str, body: Any = None, *, data: bytes | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(sim.host, sim.port, timeout=10)
    try:
        payload = data if data is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, payload, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def placed(lin: linstor.Linstor, rsc: str) -> dict[str, bool]:
    """node -> diskless? for the resource."""
    res = lin.resource_list_raise(filter_by_resources=[rsc])
    return {r.node_name: consts.FLAG_DISKLESS in r.flags for r in res.resources}


def write_at(path: str | Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path: str | Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def dev_size(path: str | Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def spawn(lin: linstor.Linstor, group: str, name: str, size_kib: int = SIZE_KIB, **kwargs: Any) -> list[Any]:
    return lin.resource_group_spawn(group, name, [size_kib], **kwargs)


# ----------------------------------------------------------------------------------------------


def test_module_says_it_is_a_simulator() -> None:
    doc = simmod.__doc__ or ""
    assert "simulator of the LINSTOR controller's REST API, for tests" in doc
    assert "It is NOT LINSTOR." in doc


def test_validator_is_strict(contract: Contract) -> None:
    node = {"name": "n1", "type": "Satellite"}
    assert not contract.errors("GET", "/v1/nodes", 200, [node])
    assert contract.errors("GET", "/v1/nodes", 200, [{**node, "colour": "red"}])  # invented field
    assert contract.errors("GET", "/v1/nodes", 200, [{**node, "type": "SATELLITE"}])  # not in the enum
    assert contract.errors("GET", "/v1/nodes", 200, [{"name": "n1"}])  # required field missing
    entry = {"ret_code": 1, "message": "m"}
    assert not contract.errors("DELETE", "/v1/resource-definitions/x", 200, [entry])
    assert contract.errors("DELETE", "/v1/resource-definitions/x", 200, [{**entry, "ret_code": 2**63}])  # int64
    assert contract.errors("DELETE", "/v1/resource-definitions/x", 200, [{**entry, "created_at": "yesterday"}])
    assert contract.errors("DELETE", "/v1/resource-definitions/x", 404, [{"message": "m"}])  # failures too
    # ResourceWithVolumes has the resource's fields and its volumes, nothing else
    assert not contract.errors("GET", "/v1/view/resources", 200, [{"name": "r", "volumes": [{"volume_number": 0}]}])
    assert contract.errors("GET", "/v1/view/resources", 200, [{"name": "r", "volumes": [{"vlm_nr": 0}]}])
    # requests: python-linstor's bodies are checked the same way
    assert not contract.request_errors("POST", "/v1/resource-definitions/r/volume-definitions",
                                       {"volume_definition": {"size_kib": 4096}})
    assert contract.request_errors("POST", "/v1/resource-definitions/r/volume-definitions",
                                   {"volume_definition": {"size_kib": "4096"}})
    assert contract.request_errors("DELETE", "/v1/resource-definitions/r", {"force": True})
    with pytest.raises(AssertionError, match="documents no 201"):
        contract.errors("GET", "/v1/nodes", 201, [])
    with pytest.raises(AssertionError, match="not in the contract"):
        contract.errors("GET", "/v1/no-such-thing", 200, [])
    # the contract lists exactly the simulator's routes, with their success status
    assert sorted((r["method"], r["path"], r["status"], r["name"]) for r in contract.routes) == sorted(
        (r.method, r.template, r.status, r.name) for r in ROUTES)
    for route in ROUTES:
        path = re.sub(r"\{[^}]+\}", "x", route.template)
        assert contract.template(path) == route.template, route
        contract.response_schema(route.method, path, route.status)


def test_connect_version_and_failover(sim: LinstorSim, contract: Contract) -> None:
    assert sim.url == f"linstor://127.0.0.1:{sim.port}" and sim.http_url == f"http://127.0.0.1:{sim.port}"
    with linstor.Linstor(sim.url, timeout=5) as lin:
        version = lin.controller_version()
        assert (version.version, version.rest_api_version) == (simmod.CONTROLLER_VERSION, simmod.REST_API_VERSION)
        assert lin.controller_info().startswith("LINSTOR,Controller,")
        assert not lin.api_version_smaller("1.28.0")
        ok(lin.controller_set_prop("Aux/one/cluster", "sim"))
        assert lin.controller_props()[0].properties == {"Aux/one/cluster": "sim"}
        ok(lin.controller_del_prop("Aux/one/cluster"))
        assert lin.controller_props()[0].properties == {}
    # a dead controller first: MultiLinstor moves on, as with LS_CONTROLLERS
    dead = socket_free_port()
    uris = linstor.MultiLinstor.controller_uri_list(f"127.0.0.1:{dead},{sim.host}:{sim.port}")
    with linstor.MultiLinstor(uris, timeout=5) as lin:
        assert lin.controller_host() == sim.url
        assert [n.name for n in lin.node_list_raise().nodes] == ["node-a", "node-b", "node-c", "node-d", "host-1"]
    with pytest.raises(linstor.LinstorNetworkError), linstor.MultiLinstor([f"linstor://127.0.0.1:{dead}"]) as lin:
        pass


def socket_free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_nodes_and_storage_pools(sim: LinstorSim, lin: linstor.Linstor) -> None:
    nodes = lin.node_list_raise().nodes
    node_a = next(n for n in nodes if n.name == "node-a")
    assert node_a.type == "Satellite" and node_a.connection_status == "ONLINE"
    assert node_a.props["Aux/site"] == "s1" and node_a.net_interfaces[0].address == "127.0.0.1"
    assert [n.name for n in lin.node_list_raise(filter_by_props=["Aux/site=s2"]).nodes] == ["node-c", "node-d"]
    assert [n.name for n in lin.node_list_raise(filter_by_props=["Aux/rack"]).nodes] == ["node-a", "node-b", "node-c"]
    assert [n.name for n in lin.node_list_raise(filter_by_nodes=["NODE-B"]).nodes] == ["node-b"]
    ok(lin.node_modify("node-d", property_dict={"Aux/rack": "r9"}, delete_props=["Aux/site"]))
    node_d = lin.node_list_raise(filter_by_nodes=["node-d"]).nodes[0]
    assert node_d.props["Aux/rack"] == "r9" and "Aux/site" not in node_d.props
    err = error(lin.node_modify("nope", property_dict={"Aux/x": "1"}))
    assert err.ret_code == rc(consts.FAIL_NOT_FOUND_NODE, consts.MASK_MOD, consts.MASK_NODE)
    assert last_status(sim, "node_modify") == 404

    pools = lin.storage_pool_list_raise().storage_pools
    by_key = {(p.node_name, p.name): p for p in pools}
    assert len(pools) == 9  # one pool per storage node, plus the diskless pool on every node
    for node in ("node-a", "node-b", "node-c", "node-d", "host-1"):
        diskless = by_key[(node, "DfltDisklessStorPool")]
        assert diskless.is_diskless() and not diskless.supports_snapshots()
    thin, thick = by_key[("node-a", "thin")], by_key[("node-d", "thick")]
    assert thin.supports_snapshots() and thin.is_thin() and thin.provider_kind == "LVM_THIN"
    assert not thick.supports_snapshots() and thick.is_fat() and thick.provider_kind == "LVM"
    assert thin.free_space.total_capacity == simmod.DEFAULT_CAPACITY_KIB
    only = lin.storage_pool_list_raise(filter_by_nodes=["node-d"], filter_by_stor_pools=["thick"]).storage_pools
    assert [(p.node_name, p.name) for p in only] == [("node-d", "thick")]


def test_resource_groups_volume_groups_and_spawn(sim: LinstorSim, lin: linstor.Linstor) -> None:
    ok(
        lin.resource_group_create(
            "one-ds-100",
            description="images",
            place_count=2,
            storage_pool=["thin"],
            do_not_place_with=["x"],
            do_not_place_with_regex="^y$",
            replicas_on_same=["Aux/site"],
            replicas_on_different=["Aux/rack"],
            diskless_on_remaining=False,
            layer_list=["drbd", "storage"],
            provider_list=["LVM_THIN"],
            property_dict={"Aux/one/DS_ID": "100"},
        )
    )
    err = error(lin.resource_group_create("one-ds-100"))
    assert err.ret_code == rc(consts.FAIL_EXISTS_RSC_GRP, consts.MASK_CRT, consts.MASK_RSC_GRP)
    assert last_status(sim, "resource_group_create") == 500
    assert error(lin.resource_group_create("1bad")).ret_code & 0x7FFF == 237  # FAIL_INVLD_RSC_GRP_NAME
    rg = lin.resource_group_list_raise(filter_by_resource_groups=["one-ds-100"]).resource_groups[0]
    sf = rg.select_filter
    assert (rg.name, rg.description, rg.properties) == ("one-ds-100", "images", {"Aux/one/DS_ID": "100"})
    assert (sf.place_count, sf.storage_pool_list, sf.storage_pool) == (2, ["thin"], "thin")
    assert (sf.not_place_with_rsc, sf.not_place_with_rsc_regex) == (["x"], "^y$")
    assert (sf.replicas_on_same, sf.replicas_on_different) == (["Aux/site"], ["Aux/rack"])
    assert (sf.layer_stack, sf.provider_list, sf.diskless_on_remaining) == (["DRBD", "STORAGE"], ["LVM_THIN"], False)
    ok(
        lin.resource_group_modify(
            "one-ds-100", place_count=3, replicas_on_same=[], replicas_on_different=[], property_dict={"Aux/x": "1"}
        )
    )
    rg = lin.resource_group_list_raise(filter_by_props=["Aux/x=1"]).resource_groups[0]
    assert rg.select_filter.place_count == 3 and rg.select_filter.replicas_on_same is None
    assert rg.select_filter.replicas_on_different is None and rg.select_filter.storage_pool_list == ["thin"]
    assert [g.name for g in lin.resource_group_list_raise().resource_groups] == ["DfltRscGrp", "one-ds-100"]
    assert error(lin.resource_group_modify("nope", place_count=1)).ret_code & 0x7FFF == 317

    # volume groups
    ok(lin.volume_group_create("one-ds-100"))
    ok(lin.volume_group_create("one-ds-100", volume_nr=1, property_dict={"Aux/v": "1"}))
    assert error(lin.volume_group_create("one-ds-100", volume_nr=1)).ret_code & 0x7FFF == 523
    ok(lin.volume_group_modify("one-ds-100", 1, property_dict={"Aux/v": "2"}, gross=True))
    vgs = lin.volume_group_list_raise("one-ds-100").volume_groups
    assert [(v.number, v.properties, v.flags) for v in vgs] == [(0, {}, []), (1, {"Aux/v": "2"}, ["GROSS_SIZE"])]
    # two volume groups: spawning one size fails unless partial
    err = error(spawn(lin, "one-ds-100", "one-image-1"))
    assert err.ret_code == rc(consts.FAIL_INVLD_VLM_SIZES, 0, consts.MASK_RSC_GRP)
    ok(lin.volume_group_delete("one-ds-100", 1))
    assert [v.number for v in lin.volume_group_list_raise("one-ds-100").volume_groups] == [0]

    # place_count 3 over "thin": nodes a, b, c
    replies = ok(spawn(lin, "one-ds-100", "one-image-1"))
    assert any("successfully autoplaced on 3 nodes" in r.message for r in replies)
    assert placed(lin, "one-image-1") == {"node-a": False, "node-b": False, "node-c": False}
    rd = lin.resource_dfn_list_raise(filter_by_resource_definitions=["one-image-1"]).resource_definitions[0]
    assert rd.resource_group_name == "one-ds-100" and [v.size for v in rd.volume_definitions] == [SIZE_KIB]
    assert [layer.type for layer in rd.layer_data] == ["DRBD", "STORAGE"]
    # definitions only
    replies = ok(spawn(lin, "one-ds-100", "one-image-2", definitions_only=True))
    assert replies[-1].ret_code == rc(consts.INFO_NO_RSC_SPAWNED, 0, consts.MASK_RSC_GRP)
    assert placed(lin, "one-image-2") == {}
    # not enough nodes: nothing is created
    ok(lin.resource_group_modify("one-ds-100", place_count=4))
    err = error(spawn(lin, "one-ds-100", "one-image-3"))
    assert err.ret_code == rc(consts.FAIL_NOT_ENOUGH_NODES, 0, consts.MASK_RSC_GRP)
    assert err.message == "Not enough available nodes" and "place_count: 4" in (err.details or "")
    assert last_status(sim, "resource_group_spawn") == 500
    assert lin.resource_dfn_list_raise(filter_by_resource_definitions=["one-image-3"]).resource_definitions == []

    # capacity queries
    qmvs = lin.resource_group_qmvs("one-ds-100")[0]
    assert qmvs.candidates == []  # place_count 4 but only three "thin" pools
    ok(lin.resource_group_modify("one-ds-100", place_count=2))
    cand = lin.resource_group_qmvs("one-ds-100")[0].candidates[0]
    assert cand.storage_pool == "thin" and cand.all_thin and len(cand.node_names) == 2
    assert cand.max_volume_size > simmod.DEFAULT_CAPACITY_KIB  # thin pools may be oversubscribed
    info = lin.resource_group_query_size_info("one-ds-100")
    assert info.space_info.max_vlm_size_in_kib > 0 and len(info.space_info.next_spawn_result) == 2

    # delete: refused while definitions use the group
    err = error(lin.resource_group_delete("one-ds-100"))
    assert err.ret_code & 0x7FFF == 501
    ok(lin.resource_dfn_delete("one-image-1"))
    ok(lin.resource_dfn_delete("one-image-2"))
    ok(lin.resource_group_delete("one-ds-100"))
    warn = lin.resource_group_delete("one-ds-100")[0]
    assert warn.is_warning() and not warn.is_error()
    assert error(lin.resource_group_delete("DfltRscGrp")).ret_code & 0x7FFF == 419


def test_autoplace_select_filter(sim: LinstorSim, lin: linstor.Linstor) -> None:
    ok(lin.resource_group_create("gr", place_count=2, storage_pool=["thin"], replicas_on_same=["Aux/site"]))
    ok(lin.volume_group_create("gr"))
    ok(spawn(lin, "gr", "same-site"))
    assert set(placed(lin, "same-site")) == {"node-a", "node-b"}  # only site s1 has two "thin" nodes

    ok(spawn(lin, "gr", "fixed-site", replicas_on_same=["Aux/site=s2"], storage_pool=[""], place_count=2))
    assert set(placed(lin, "fixed-site")) == {"node-c", "node-d"}

    ok(spawn(lin, "gr", "diff-site", replicas_on_same=[], replicas_on_different=["Aux/site"]))
    nodes = set(placed(lin, "diff-site"))
    assert len(nodes) == 2 and "node-c" in nodes  # one node of each site; only node-c has "thin" in s2

    # three "thin" nodes but only two sites; twice per site is allowed by the map
    assert error(spawn(lin, "gr", "x-diff", replicas_on_same=[], replicas_on_different=["Aux/site"], place_count=3))
    ok(spawn(lin, "gr", "x-diff", replicas_on_same=[], x_replicas_on_different={"Aux/site": 2}, place_count=3))
    assert set(placed(lin, "x-diff")) == {"node-a", "node-b", "node-c"}

    ok(spawn(lin, "gr", "not-with", replicas_on_same=[], do_not_place_with=["same-site"], storage_pool=[""]))
    assert set(placed(lin, "not-with")) == {"node-c", "node-d"}
    ok(spawn(lin, "gr", "not-regex", replicas_on_same=[], do_not_place_with_regex="^SAME-", storage_pool=[""]))
    assert set(placed(lin, "not-regex")) == {"node-c", "node-d"}

    ok(spawn(lin, "gr", "fat", replicas_on_same=[], storage_pool=[""], provider_list=["LVM"], place_count=1))
    assert placed(lin, "fat") == {"node-d": False}

    ok(spawn(lin, "gr", "everywhere", replicas_on_same=[], diskless_on_remaining=True, layer_list=["drbd"]))
    everywhere = placed(lin, "everywhere")
    assert sorted(n for n, dl in everywhere.items() if not dl) == sorted({"node-a", "node-b"})
    assert sorted(n for n, dl in everywhere.items() if dl) == ["host-1", "node-c", "node-d"]

    # autoplace on an existing definition: counts existing replicas, turns diskless ones diskful
    ok(lin.resource_dfn_create("manual", resource_group="gr"))
    ok(lin.volume_dfn_create("manual", SIZE_KIB))
    ok(lin.resource_create([linstor.ResourceData("node-c", "manual", storage_pool="thin")]))
    ok(lin.resource_create([linstor.ResourceData("node-a", "manual", diskless=True)]))
    replies = ok(lin.resource_auto_place("manual", 2, storage_pool=["thin"], replicas_on_same=[]))
    assert replies[-1].ret_code == rc(0, 0, consts.MASK_RSC)
    assert placed(lin, "manual") == {"node-c": False, "node-a": False}
    warn = ok(lin.resource_auto_place("manual", 2))[-1]
    assert warn.is_warning() and warn.ret_code == rc(consts.WARN_RSC_ALREADY_DEPLOYED, 0, consts.MASK_RSC)
    assert lin.resource_auto_place("manual", 1)[-1].is_warning()  # more than wanted: a warning
    # the group's replicas_on_same=Aux/site, but the replicas are in two sites already
    err = error(lin.resource_auto_place("manual", 3))
    assert err.ret_code == rc(consts.FAIL_UNDECIDABLE_AUTOPLACMENT, 0, consts.MASK_RSC)
    err = error(lin.resource_auto_place("manual", 5, replicas_on_same=[]))
    assert err.ret_code == rc(consts.FAIL_NOT_ENOUGH_NODES, 0, consts.MASK_RSC)
    sim.set_node_online("node-b", False)
    offline = next(n for n in lin.node_list_raise().nodes if n.name == "node-b")
    assert offline.connection_status == "OFFLINE"
    ok(lin.resource_auto_place("manual", 3, storage_pool=["thin", "thick"], replicas_on_same=[]))
    assert set(placed(lin, "manual")) == {"node-a", "node-c", "node-d"}


def test_resource_definitions_properties_and_volume_definitions(sim: LinstorSim, lin: linstor.Linstor) -> None:
    ok(lin.resource_dfn_create("one-vm-7-disk-0"))
    err = error(lin.resource_dfn_create("ONE-VM-7-DISK-0"))  # names are case-insensitive
    assert err.ret_code == rc(consts.FAIL_EXISTS_RSC_DFN, consts.MASK_CRT, consts.MASK_RSC_DFN)
    for bad in ("7abc", "a", "a b", "x" * 49):
        assert error(lin.resource_dfn_create(bad)).ret_code & 0x7FFF == 202, bad
    assert error(lin.resource_dfn_create("r", resource_group="nope")).ret_code & 0x7FFF == 317
    props = {"Aux/one/VM_ID": "7", "Aux/one/DS_ID": "100", "Aux/one/DISK_ID": "0"}
    ok(lin.resource_dfn_modify("one-vm-7-disk-0", props))
    ok(lin.resource_dfn_modify("one-vm-7-disk-0", {"DrbdOptions/Net/allow-two-primaries": "yes"}))
    assert lin.resource_dfn_props_list("one-vm-7-disk-0", "Aux/one/") == props
    err = error(lin.resource_dfn_modify("one-vm-7-disk-0", {"Colour": "red"}))
    assert err.ret_code == rc(consts.FAIL_INVLD_PROP, consts.MASK_MOD, consts.MASK_RSC_DFN)
    assert err.message == "The key 'Colour' is not whitelisted."
    assert error(lin.resource_dfn_modify("one-vm-7-disk-0", {"DrbdOptions/Net/allow-two-primaries": "on"}))
    ok(lin.resource_dfn_modify("one-vm-7-disk-0", {}, delete_props=["Aux/one/DISK_ID"]))
    err = error(lin.resource_dfn_modify("nope", {"Aux/x": "1"}))
    assert err.ret_code == rc(consts.FAIL_NOT_FOUND_RSC_DFN, consts.MASK_MOD, consts.MASK_RSC_DFN)
    assert last_status(sim, "resource_dfn_modify") == 404
    ok(lin.resource_dfn_create("other", resource_group="DfltRscGrp"))
    listed = lin.resource_dfn_list_raise(filter_by_props=["Aux/one/DS_ID=100"]).resource_definitions
    assert [r.name for r in listed] == ["one-vm-7-disk-0"]
    assert listed[0].properties["DrbdOptions/Net/allow-two-primaries"] == "yes"

    ok(lin.volume_dfn_create("one-vm-7-disk-0", SIZE_KIB))
    assert error(lin.volume_dfn_create("one-vm-7-disk-0", SIZE_KIB, volume_nr=0)).ret_code & 0x7FFF == 503
    ok(lin.volume_dfn_create("one-vm-7-disk-0", 1024, volume_nr=1, encrypt=True))
    vds = lin.resource_dfn_list_raise(filter_by_resource_definitions=["one-vm-7-disk-0"]).resource_definitions[0]
    assert [(v.number, v.size, v.flags) for v in vds.volume_definitions] == [
        (0, SIZE_KIB, []),
        (1, 1024, ["ENCRYPTED"]),
    ]
    assert vds.volume_definitions[0].drbd_data.minor >= simmod.FIRST_MINOR
    ok(lin.volume_dfn_modify("one-vm-7-disk-0", 1, size=512))  # not deployed: may shrink
    ok(lin.volume_dfn_delete("one-vm-7-disk-0", 1))
    assert error(lin.volume_dfn_delete("one-vm-7-disk-0", 1)).ret_code & 0x7FFF == 303
    ok(lin.resource_create([linstor.ResourceData("node-a", "one-vm-7-disk-0", storage_pool="thin")]))
    link = sim.device_path("one-vm-7-disk-0", "node-a")
    assert dev_size(link) == SIZE_KIB * KiB
    ok(lin.volume_dfn_modify("one-vm-7-disk-0", 0, size=2 * SIZE_KIB))
    assert dev_size(link) == 2 * SIZE_KIB * KiB  # the device grew
    err = error(lin.volume_dfn_modify("one-vm-7-disk-0", 0, size=SIZE_KIB))
    assert err.ret_code == rc(consts.FAIL_INVLD_VLM_SIZE, consts.MASK_MOD, consts.MASK_VLM_DFN)
    err = error(lin.volume_dfn_modify("one-vm-7-disk-0", 0, size=10**12))
    assert err.ret_code & 0x7FFF == 980  # FAIL_NOT_ENOUGH_FREE_SPACE
    assert lin.resource_dfn_list_raise(query_volume_definitions=False).resource_definitions[0].volume_definitions == []
    assert lin.resource_dfn_wait_synced("one-vm-7-disk-0", timeout=5) is True

    # the Resource class: external names, allow-two-primaries, sizes
    res = linstor.Resource("one-vm-7-disk-0", uri=sim.url)
    assert res.allow_two_primaries is True and res.volumes[0].size == 2 * SIZE_KIB * KiB
    res.allow_two_primaries = False
    assert lin.resource_dfn_props_list("one-vm-7-disk-0")["DrbdOptions/Net/allow-two-primaries"] == "no"
    res.volumes[0].size = 3 * SIZE_KIB * KiB
    assert dev_size(link) == 3 * SIZE_KIB * KiB
    fresh = linstor.Resource("my disk #1", uri=sim.url)  # not a valid LINSTOR name: one is made up
    fresh.volumes[0] = linstor.Volume(f"{SIZE_KIB}KiB")
    fresh.placement.redundancy = 1
    fresh.autoplace()
    assert fresh.linstor_name == "my_disk__1" and fresh.name == "my disk #1"
    rd = lin.resource_dfn_list_raise(filter_by_resource_definitions=["my_disk__1"]).resource_definitions[0]
    assert rd.external_name == "my disk #1"
    fresh.delete()
    assert not lin.resource_dfn_list_raise(filter_by_resource_definitions=["my_disk__1"]).resource_definitions


def test_resources_devices_and_data_across_nodes(sim: LinstorSim, lin: linstor.Linstor) -> None:
    ok(lin.resource_dfn_create("one-image-5"))
    ok(lin.volume_dfn_create("one-image-5", SIZE_KIB))
    rsc = "one-image-5"
    ok(
        lin.resource_create(
            [
                linstor.ResourceData("node-a", rsc, storage_pool="thin"),
                linstor.ResourceData("node-b", rsc, storage_pool="thin"),
            ]
        )
    )
    assert error(lin.resource_create([linstor.ResourceData("node-a", rsc)])).ret_code & 0x7FFF == 502
    assert error(lin.resource_create([linstor.ResourceData("node-x", rsc)])).ret_code & 0x7FFF == 300
    missing_pool = linstor.ResourceData("node-c", rsc, storage_pool="nope")
    assert error(lin.resource_create([missing_pool])).ret_code & 0x7FFF == 310
    a, b, c, host = (sim.device_path(rsc, n) for n in ("node-a", "node-b", "node-c", "host-1"))
    loop = sim.loop_device(rsc)
    assert loop and os.readlink(a) == loop and os.readlink(b) == loop
    assert not c.exists() and not host.exists()  # each node sees only what is placed on it

    # one device: data written on one node is read on the other
    write_at(a, 0, b"written-on-node-a")
    assert read_at(b, 0, 17) == b"written-on-node-a"

    # diskless attach on the compute host (make-available) sees the same data
    ok(lin.resource_make_available("host-1", rsc))
    assert placed(lin, rsc) == {"node-a": False, "node-b": False, "host-1": True}
    assert read_at(host, 0, 17) == b"written-on-node-a"
    write_at(host, MiB, b"from-host")
    assert read_at(a, MiB, 9) == b"from-host"
    again = ok(lin.resource_make_available("host-1", rsc))
    assert again[0].message == "Resource already deployed as requested"
    assert again[0].ret_code == rc(0, 0, consts.MASK_RSC)

    view = lin.resource_list_raise(filter_by_nodes=["host-1"]).resources[0]
    vol = view.volumes[0]
    assert consts.FLAG_DISKLESS in view.flags and consts.FLAG_DRBD_DISKLESS in view.flags
    assert vol.device_path == str(host) and vol.properties["Satellite/Device/Symlinks/0"] == str(host)
    assert vol.storage_pool_name == "DfltDisklessStorPool" and vol.storage_pool_driver_name == "DISKLESS"
    assert view.layer_data.layer_stack == ["DRBD", "STORAGE"]
    states = {s.node_name: s.volume_states[0].disk_state for s in lin.resource_list_raise().resource_states}
    assert states == {"node-a": "UpToDate", "node-b": "UpToDate", "host-1": "Diskless"}
    by_pool = lin.volume_list_raise(filter_by_stor_pools=["thin"]).resources
    assert sorted(r.node_name for r in by_pool) == ["node-a", "node-b"]
    ok(lin.resource_modify("node-a", rsc, property_dict={"Aux/x": "1"}))
    assert [r.node_name for r in lin.resource_list_raise(filter_by_props=["Aux/x=1"]).resources] == ["node-a"]

    # detaching on one node removes only that node's link; the device stays
    ok(lin.resource_delete("host-1", rsc))
    assert not host.exists() and os.readlink(a) == loop
    ok(lin.resource_create([linstor.ResourceData("host-1", rsc, diskless=True)]))
    assert os.readlink(host) == loop
    # the last diskful replica cannot go while a diskless one is attached
    ok(lin.resource_delete("node-b", rsc))
    err = error(lin.resource_delete("node-a", rsc))
    assert err.ret_code == rc(consts.FAIL_IN_USE, consts.MASK_DEL, consts.MASK_RSC)
    assert err.message == "Last resource of 'one-image-5' with disk still has diskless resources attached."
    # in use (primary) on a node: not deleted there
    sim.set_in_use(rsc, "host-1")
    assert error(lin.resource_delete("host-1", rsc)).ret_code & 0x7FFF == 997
    assert lin.resource_list_raise(filter_by_nodes=["host-1"]).resource_states[0].in_use is True
    sim.set_in_use(rsc, "host-1", False)
    ok(lin.resource_delete("host-1", rsc))
    warn = lin.resource_delete("host-1", rsc)[0]  # not there any more: a warning, HTTP 200
    assert warn.is_warning() and warn.ret_code == rc(consts.WARN_NOT_FOUND, consts.MASK_DEL, consts.MASK_RSC)
    assert last_status(sim, "resource_delete") == 200
    data = sim.data_path(rsc)
    ok(lin.resource_delete("node-a", rsc))  # the last one: the data and the device go
    assert sim.loop_device(rsc) is None and data is not None and not data.exists()
    assert not a.exists() and not a.parent.exists()
    assert not _our_loops(sim.root)

    # make-available without a diskful peer places a diskful replica on that node
    ok(lin.resource_make_available("node-c", rsc))
    assert placed(lin, rsc) == {"node-c": False}
    assert read_at(c, 0, 17) == b"\0" * 17  # a new, empty volume
    err = error(lin.resource_make_available("host-1", rsc, diskful=True))  # no diskful pool there
    assert err.ret_code & 0x7FFF == 996
    ok(lin.resource_make_available("node-a", rsc))
    assert placed(lin, rsc) == {"node-c": False, "node-a": True}
    ok(lin.resource_make_available("node-a", rsc, diskful=True))  # diskless -> diskful
    assert placed(lin, rsc) == {"node-c": False, "node-a": False}
    ok(lin.resource_toggle_disk("node-a", rsc, diskless=True))
    assert placed(lin, rsc)["node-a"] is True and os.readlink(a) == sim.loop_device(rsc)
    assert lin.resource_toggle_disk("node-a", rsc, diskless=True)[0].is_warning()
    ok(lin.resource_toggle_disk("node-a", rsc, storage_pool="thin"))
    assert placed(lin, rsc)["node-a"] is False

    # the Resource class on top: activate/deactivate (make-available, delete diskless)
    res = linstor.Resource(rsc, uri=sim.url)
    assert sorted(res.diskful_nodes()) == ["node-a", "node-c"]
    res.activate("node-d")
    assert res.is_diskless("node-d") and sim.device_path(rsc, "node-d").is_symlink()
    res.deactivate("node-d")
    assert not res.is_assigned("node-d") and not sim.device_path(rsc, "node-d").exists()
    res.diskful("node-b")
    assert res.is_diskful("node-b")


def test_snapshots_restore_rollback_and_clone(sim: LinstorSim, lin: linstor.Linstor) -> None:
    ok(lin.resource_group_create("gr", place_count=2, storage_pool=["thin"]))
    ok(lin.volume_group_create("gr"))
    ok(spawn(lin, "gr", "one-image-9"))
    src = sim.device_path("one-image-9", "node-a")
    write_at(src, 0, b"AAAA")
    ok(lin.snapshot_create([], "one-image-9", "snapshot-0"))
    write_at(src, 0, b"BBBB")
    ok(lin.snapshot_create(["node-a", "node-b"], "one-image-9", "snapshot-1"))
    write_at(src, 0, b"CCCC")
    err = error(lin.snapshot_create([], "one-image-9", "snapshot-1"))
    assert err.ret_code == rc(consts.FAIL_EXISTS_SNAPSHOT_DFN, consts.MASK_CRT, consts.MASK_SNAPSHOT)
    assert error(lin.snapshot_create([], "one-image-9", "bad name")).ret_code & 0x7FFF == 218
    assert error(lin.snapshot_create(["host-1"], "one-image-9", "s2")).ret_code & 0x7FFF == 302

    snaps = lin.snapshot_dfn_list_raise(filter_by_resources=["one-image-9"]).snapshots
    assert [(s.name, s.rsc_name, sorted(s.nodes)) for s in snaps] == [
        ("snapshot-0", "one-image-9", ["node-a", "node-b"]),
        ("snapshot-1", "one-image-9", ["node-a", "node-b"]),
    ]
    assert [s.properties["SequenceNumber"] for s in snaps] == ["1", "2"]
    assert snaps[0].snapshot_volume_definitions[0].size == SIZE_KIB and snaps[0].flags == ["SUCCESSFUL"]
    assert [s.node_name for s in snaps[0].snapshots] == ["node-a", "node-b"]
    ok(lin.snapshot_dfn_modify("one-image-9", "snapshot-0", {"Aux/one/SNAPSHOT_0/DISK_SIZE": "4"}))
    assert lin.snapshot_dfn_list_raise().snapshots[0].properties["Aux/one/SNAPSHOT_0/DISK_SIZE"] == "4"
    assert lin.snapshot_dfn_list_raise(filter_by_nodes=["node-c"]).snapshots == []

    # rollback only to the most recent snapshot
    err = error(lin.snapshot_rollback("one-image-9", "snapshot-0"))
    assert err.ret_code == rc(consts.FAIL_EXISTS_SNAPSHOT_DFN, consts.MASK_MOD, consts.MASK_SNAPSHOT)
    assert err.message == "Rollback is only allowed with the most recent snapshot"
    assert last_status(sim, "snapshot_rollback") == 500
    assert read_at(src, 0, 4) == b"CCCC"
    ok(lin.snapshot_rollback("one-image-9", "snapshot-1"))
    assert read_at(src, 0, 4) == b"BBBB" and read_at(sim.device_path("one-image-9", "node-b"), 0, 4) == b"BBBB"
    fd = os.open(src, os.O_RDONLY)  # an open device is in use
    try:
        assert error(lin.snapshot_rollback("one-image-9", "snapshot-1")).ret_code & 0x7FFF == 997
    finally:
        os.close(fd)

    # restore the older snapshot into a new definition: a copy of the data at that time
    ok(lin.resource_dfn_create("one-image-9-tmp", resource_group="gr"))
    ok(lin.snapshot_volume_definition_restore("one-image-9", "snapshot-0", "one-image-9-tmp"))
    ok(lin.snapshot_resource_restore([], "one-image-9", "snapshot-0", "one-image-9-tmp"))
    assert placed(lin, "one-image-9-tmp") == {"node-a": False, "node-b": False}
    tmp = sim.device_path("one-image-9-tmp", "node-b")
    assert read_at(tmp, 0, 4) == b"AAAA"
    write_at(tmp, 0, b"TTTT")
    assert read_at(src, 0, 4) == b"BBBB"  # a copy, not the same volume
    err = error(lin.snapshot_resource_restore([], "one-image-9", "snapshot-0", "one-image-9-tmp"))
    assert err.message == "Cannot restore to resource definition which already has resources"
    assert error(lin.snapshot_resource_restore([], "one-image-9", "nope", "one-image-9-tmp")).ret_code & 0x7FFF == 313
    # restore onto given nodes only, then grow (the TM clone in snapshot mode)
    ok(lin.resource_dfn_create("one-vm-1-disk-0"))
    ok(lin.snapshot_volume_definition_restore("one-image-9", "snapshot-1", "one-vm-1-disk-0"))
    ok(lin.snapshot_resource_restore(["node-b"], "one-image-9", "snapshot-1", "one-vm-1-disk-0"))
    ok(lin.volume_dfn_modify("one-vm-1-disk-0", 0, size=2 * SIZE_KIB))
    clone_dev = sim.device_path("one-vm-1-disk-0", "node-b")
    assert placed(lin, "one-vm-1-disk-0") == {"node-b": False} and dev_size(clone_dev) == 2 * SIZE_KIB * KiB
    assert read_at(clone_dev, 0, 4) == b"BBBB"

    # delete snapshots: then the older one is the latest and can be rolled back to
    err = error(lin.resource_dfn_delete("one-image-9"))
    assert err.ret_code == rc(consts.FAIL_EXISTS_SNAPSHOT_DFN, consts.MASK_DEL, consts.MASK_RSC_DFN)
    ok(lin.snapshot_delete("one-image-9", "snapshot-1"))
    assert lin.snapshot_delete("one-image-9", "snapshot-1")[0].is_warning()
    ok(lin.snapshot_rollback("one-image-9", "snapshot-0"))
    assert read_at(src, 0, 4) == b"AAAA"

    # clone (python-linstor's Resource.clone: clone + clone status)
    res = linstor.Resource("one-image-9", uri=sim.url)
    copy_res = res.clone("one-image-9-copy")
    assert copy_res.linstor_name == "one-image-9-copy" and sorted(copy_res.diskful_nodes()) == ["node-a", "node-b"]
    assert read_at(sim.device_path("one-image-9-copy", "node-a"), 0, 4) == b"AAAA"
    assert lin.resource_dfn_clone_status("one-image-9", "one-image-9-copy").status == consts.CloneStatus.COMPLETE
    started = lin.resource_dfn_clone("one-image-9", "one-image-9-c2", property_dict={"Aux/one/IMAGE_ID": "11"})
    assert (started.source_name, started.clone_name) == ("one-image-9", "one-image-9-c2")
    assert started.location == "/v1/resource-definitions/one-image-9/clone/one-image-9-c2"
    assert lin.resource_dfn_props_list("one-image-9-c2", "Aux/one/") == {"Aux/one/IMAGE_ID": "11"}
    with pytest.raises(linstor.LinstorApiCallError):
        lin.resource_dfn_clone_status("one-image-9", "never-cloned")

    # Resource: snapshot create/rollback/restore/delete through the high-level class
    res.snapshot_create("snapshot-5")
    write_at(src, 0, b"DDDD")
    res.snapshot_rollback("snapshot-5")
    assert read_at(src, 0, 4) == b"AAAA"
    restored = res.restore_from_snapshot("snapshot-5", "one-image-9-r")
    assert sorted(restored.diskful_nodes()) == ["node-a", "node-b"]
    res.delete()  # deletes its snapshots, then the definition
    assert not lin.resource_dfn_list_raise(filter_by_resource_definitions=["one-image-9"]).resource_definitions
    assert not lin.snapshot_dfn_list_raise(filter_by_resources=["one-image-9"]).snapshots

    # consistent group snapshot of several resources
    ok(lin.snapshot_create_multi([], ["one-image-9-copy", "one-image-9-c2"], "vm-snap-1"))
    assert len(lin.snapshot_dfn_list_raise(filter_by_resources=["one-image-9-copy", "one-image-9-c2"]).snapshots) == 2
    err = error(lin.snapshot_create_multi([], ["one-image-9-copy", "nope"], "vm-snap-2"))
    assert err.ret_code & 0x7FFF == 301
    assert len(lin.snapshot_dfn_list_raise(filter_by_resources=["one-image-9-copy"]).snapshots) == 1  # all or nothing


def test_snapshots_refused_on_a_pool_without_snapshot_support(sim: LinstorSim, lin: linstor.Linstor) -> None:
    ok(lin.resource_dfn_create("thick-1"))
    ok(lin.volume_dfn_create("thick-1", SIZE_KIB))
    ok(lin.resource_create([linstor.ResourceData("node-d", "thick-1", storage_pool="thick")]))
    replies = lin.snapshot_create([], "thick-1", "snapshot-0")
    err = error(replies)
    assert err.ret_code == rc(consts.FAIL_SNAPSHOTS_NOT_SUPPORTED, consts.MASK_CRT, consts.MASK_SNAPSHOT)
    assert err.message == "Storage driver 'LVM' does not support snapshots."
    assert "Used for storage pool 'thick' on 'node-d'." in (err.details or "")
    assert last_status(sim, "snapshot_create") == 500
    assert lin.snapshot_dfn_list_raise().snapshots == []
    with pytest.raises(linstor.LinstorError, match="does not support snapshots"):
        linstor.Resource("thick-1", uri=sim.url).snapshot_create("snapshot-0")
    # no diskful resource at all: not found
    ok(lin.resource_dfn_create("empty"))
    err = error(lin.snapshot_create([], "empty", "s0"))
    assert err.message == "No resources found for snapshotting" and last_status(sim, "snapshot_create") == 404


def test_resource_group_and_resource_classes(sim: LinstorSim) -> None:
    group = linstor.ResourceGroup("one-ds-1", uri=sim.url)
    assert group.nr_volumes == 1
    group.redundancy = 2
    group.storage_pool = ["thin"]
    group.replicas_on_different = ["Aux/site"]
    group.property_dict = {"Aux/one/DS_ID": "1"}
    res = group.create_resource("one-image-1", [f"{SIZE_KIB}KiB"])
    assert len(res.diskful_nodes()) == 2 and "node-c" in res.diskful_nodes()
    assert group.query_max_volume_size()[0].candidates
    again = linstor.ResourceGroup("one-ds-1", uri=sim.url)  # reads it back
    assert (again.redundancy, again.storage_pool, again.replicas_on_different) == (2, ["thin"], ["Aux/site"])
    assert again.property_dict == {"Aux/one/DS_ID": "1"}
    definition_only = linstor.Resource.from_resource_group(
        sim.url, "one-ds-1", "one-image-2", [f"{SIZE_KIB}KiB"], definitions_only=True
    )
    assert definition_only.placement.storage_pool == "thin" and definition_only.diskful_nodes() == []
    definition_only.activate("node-a", diskful=True)
    assert definition_only.diskful_nodes() == ["node-a"]
    res.delete()
    definition_only.delete()
    group.delete()
    with linstor.Linstor(sim.url) as lin:
        assert [g.name for g in lin.resource_group_list_raise().resource_groups] == ["DfltRscGrp"]


def test_request_errors(sim: LinstorSim) -> None:
    status, reply = raw(sim, "GET", "/v1/no-such-thing")
    assert status == 404 and "no such endpoint" in reply[0]["message"]
    status, reply = raw(sim, "POST", "/v1/resource-definitions", data=b"{not json")
    assert status == 400 and reply[0]["ret_code"] == rc(consts.API_CALL_PARSE_ERROR)
    assert reply[0]["message"] == "Unable to parse input json."
    status, reply = raw(sim, "POST", "/v1/resource-definitions", {"resource_definition": {"name": "r1"}, "x": 1})
    assert status == 400 and 'Unrecognized field "x"' in reply[0]["details"]
    status, reply = raw(sim, "POST", "/v1/resource-definitions", {"resource_definition": {"name": 5}})
    assert status == 400
    status, reply = raw(sim, "POST", "/v1/resource-definitions", {"resource_definition": {"name": "r1"}})
    assert status == 201 and reply[0]["obj_refs"] == {"RscDfn": "r1"}
    assert reply[0]["ret_code"] == 20447233  # MASK_CRT | MASK_RSC_DFN | CREATED, as a controller sends it
    status, reply = raw(sim, "GET", "/v1/resource-definitions?offset=0&limit=1&with_volume_definitions=true")
    assert status == 200 and [r["name"] for r in reply] == ["r1"]
    status, reply = raw(sim, "PUT", "/v1/resource-definitions/r1/volume-definitions/x", {})
    assert status == 400
    status, reply = raw(sim, "DELETE", "/v1/resource-definitions/nope")
    assert status == 200 and reply[0]["ret_code"] == rc(consts.WARN_NOT_FOUND, consts.MASK_DEL, consts.MASK_RSC_DFN)
    calls = [c.name for c in sim.calls]
    assert calls[:2] == ["GET /v1/no-such-thing", "resource_dfn_create"]


def test_fault_injection(sim: LinstorSim, lin: linstor.Linstor) -> None:
    before = len(sim.calls)
    sim.fail("snapshot_create")  # an error reply
    ok(lin.resource_dfn_create("r1"))
    err = error(lin.snapshot_create([], "r1", "s1"))
    assert err.ret_code == rc(consts.FAIL_UNKNOWN_ERROR, consts.MASK_CRT, consts.MASK_SNAPSHOT)
    assert err.message == "simulated failure of snapshot_create" and last_status(sim, "snapshot_create") == 500
    assert error(lin.snapshot_create([], "r1", "s1")).message == "No resources found for snapshotting"  # once
    assert [c.name for c in sim.calls[before:]] == ["resource_dfn_create", "snapshot_create", "snapshot_create"]
    assert sim.calls[-1].body == {"name": "s1"} and sim.calls[-1].method == "POST"

    # by path, with a chosen code (its HTTP status follows), skipping the first match
    fault = sim.fail(r"^PUT /v1/resource-definitions/", ret_code=consts.FAIL_NOT_FOUND_RSC_DFN, skip=1)
    ok(lin.resource_dfn_modify("r1", {"Aux/a": "1"}))
    err = error(lin.resource_dfn_modify("r1", {"Aux/a": "2"}))
    assert err.ret_code == rc(consts.FAIL_NOT_FOUND_RSC_DFN, consts.MASK_MOD, consts.MASK_RSC_DFN)
    assert last_status(sim, "resource_dfn_modify") == 404 and fault.fired == 1
    assert lin.resource_dfn_props_list("r1") == {"Aux/a": "1"}

    # apply=True: the change is made, the reply is an error (a lost success)
    sim.fail("resource_dfn_modify", apply=True)
    error(lin.resource_dfn_modify("r1", {"Aux/a": "3"}))
    assert lin.resource_dfn_props_list("r1") == {"Aux/a": "3"}

    # drop: the connection closes without a reply
    sim.fail("resource_dfn_create", "drop")
    with pytest.raises(linstor.LinstorNetworkError):
        lin.resource_dfn_create("r2")
    assert not lin.resource_dfn_list_raise(filter_by_resource_definitions=["r2"]).resource_definitions
    sim.fail("resource_dfn_create", "drop", apply=True)
    with pytest.raises(linstor.LinstorNetworkError):
        lin.resource_dfn_create("r2")
    assert lin.resource_dfn_list_raise(filter_by_resource_definitions=["r2"]).resource_definitions  # made anyway

    # delay: slower, or a client timeout
    sim.fail("node_list", "delay", delay=0.3)
    started = time.monotonic()
    lin.node_list_raise()
    assert time.monotonic() - started >= 0.3
    with linstor.Linstor(sim.url, timeout=0.3) as slow:  # type: ignore[arg-type]
        sim.fail("node_list", "delay", delay=0.8)
        with pytest.raises(linstor.LinstorTimeoutError):
            slow.node_list_raise()

    # every call, until cleared
    sim.fail("*", times=None)
    assert error(lin.resource_dfn_delete("r1")).message.startswith("simulated failure")
    assert error(lin.resource_dfn_delete("r2")).message.startswith("simulated failure")
    sim.clear_faults()
    ok(lin.resource_dfn_delete("r1"))
    with pytest.raises(ValueError):
        sim.fail("x", "explode")
    with pytest.raises(ValueError):
        sim.fail("x", times=0)


def test_inventory(sim: LinstorSim, lin: linstor.Linstor) -> None:
    ok(lin.resource_dfn_create("r1", resource_group="DfltRscGrp"))
    ok(lin.resource_dfn_modify("r1", {"Aux/one/VM_ID": "3"}))
    ok(lin.volume_dfn_create("r1", SIZE_KIB))
    ok(lin.resource_auto_place("r1", 2, storage_pool=["thin"]))
    ok(lin.resource_make_available("host-1", "r1"))
    ok(lin.snapshot_create([], "r1", "s1"))
    inv = sim.inventory()
    assert set(inv["nodes"]) == {"node-a", "node-b", "node-c", "node-d", "host-1"}
    assert inv["nodes"]["node-d"]["pools"]["thick"]["snapshots"] is False
    assert inv["nodes"]["host-1"]["pools"].keys() == {"DfltDisklessStorPool"}
    rd = inv["resource_definitions"]["r1"]
    assert rd["props"] == {"Aux/one/VM_ID": "3"} and rd["layers"] == ["DRBD", "STORAGE"]
    assert rd["volumes"][0]["size_kib"] == SIZE_KIB and rd["volumes"][0]["loop"] in inv["loops"]
    assert sorted(n for n, r in rd["resources"].items() if not r["diskless"]) == ["node-a", "node-b"]
    assert rd["resources"]["host-1"]["links"] == [str(sim.device_path("r1", "host-1"))]
    assert rd["snapshots"]["s1"]["sequence"] == 1 and Path(rd["snapshots"]["s1"]["files"][0]).is_file()
    assert len(inv["links"]) == 3 and inv["resource_groups"]["DfltRscGrp"]["select_filter"] == {"place_count": 2}


def test_concurrent_clients(sim: LinstorSim, lin: linstor.Linstor) -> None:
    ok(lin.resource_dfn_create("shared"))
    ok(lin.volume_dfn_create("shared", SIZE_KIB))
    ok(lin.resource_create([linstor.ResourceData("node-a", "shared", storage_pool="thin")]))
    errors: list[BaseException] = []

    def attach(node: str) -> None:
        try:
            with linstor.Linstor(sim.url, timeout=10) as client:
                for _ in range(3):
                    ok(client.resource_make_available(node, "shared"))
                    ok(client.resource_delete(node, "shared"))
                ok(client.resource_make_available(node, "shared"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attach, args=(n,)) for n in ("node-b", "node-c", "node-d", "host-1")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert placed(lin, "shared") == {"node-a": False, "node-b": True, "node-c": True, "node-d": True, "host-1": True}
    loop = sim.loop_device("shared")
    assert all(os.readlink(sim.device_path("shared", n)) == loop for n in ("node-b", "node-c", "node-d", "host-1"))


def test_stop_releases_only_what_it_made(root: Path, tmp_path: Path, contract: Contract) -> None:
    before = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    shared = tmp_path / "by-res"  # two "nodes" on one host share a by-res dir
    shared.mkdir()
    (shared / "foreign").mkdir()  # not the simulator's: stays
    sim = LinstorSim(root)
    sim.start()
    assert sim.start() is sim
    sim.add_node("n1", shared, pool="thin")
    sim.add_node("n2", shared, pool="thin")
    with pytest.raises(ValueError):
        sim.add_node("n1")
    with linstor.Linstor(sim.url, timeout=10) as lin:
        for name in ("r1", "r2"):
            ok(lin.resource_dfn_create(name))
            ok(lin.volume_dfn_create(name, SIZE_KIB))
            ok(lin.resource_auto_place(name, 2))
        ok(lin.resource_delete("n2", "r2"))
        assert (shared / "r2" / "0").is_symlink()  # n1 still holds it
        assert len(_our_loops(root)) == 2
        ok(lin.resource_make_available("n2", "r2"))
    check_replies(sim, contract)
    sim.stop()
    sim.stop()
    assert not _our_loops(root)
    assert sorted(os.listdir(shared)) == ["foreign"]
    after = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    # other test sessions may attach loop devices meanwhile: compare those onto this test's files
    mine = str(tmp_path)
    assert {x for x in after.splitlines() if mine in x} == {x for x in before.splitlines() if mine in x}
    with pytest.raises(RuntimeError):
        _ = sim.port


def test_zz_every_route_is_exercised_through_python_linstor() -> None:
    """Runs last: every endpoint of the simulator was called by python-linstor in this module."""
    users = {
        name
        for name, fn in globals().items()
        if name.startswith("test_") and callable(fn) and "sim" in inspect.signature(fn).parameters
    }
    if not users <= CHECKED:
        pytest.skip("needs the whole module: not run here: " + ", ".join(sorted(users - CHECKED)))
    names = {route.name for route in ROUTES}
    for name in names:
        assert hasattr(linstor.Linstor, name), name
    missing = sorted(names - EXERCISED)
    assert not missing, f"routes never called through python-linstor: {missing}"
