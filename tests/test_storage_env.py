"""Tests of the storage test harness: the oned double (tests/sim/oned.py, not oned) through
onelib's real XML-RPC client, the real ssh hop through onelib.hostcmd, per-host device
directories in the StorPool simulator, the driver runner, and clean teardown."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import textwrap
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lxml import etree
from sim import oned as oned_sim
from sim.oned import NO_EXISTS, OnedDouble, parse_template
from storage_env import FRONTEND, ONE_AUTH, Cloud, Sshd, build_cloud, cloud, sshd

from datastore.driver import Driver
from onelib import oned as oned_client
from onelib import xmldoc
from onelib.config import Config
from onelib.errors import DriverError, NotFound, Transient
from onelib.hostcmd import Host
from onelib.oned import Oned

FIXTURES = (cloud, sshd)
ONE = Path(__file__).resolve().parent / "fixtures" / "opennebula"


def _client(cloud: Cloud, auth: str = ONE_AUTH) -> Oned:
    return Oned(cloud.oned.url, auth, timeout=5)


def _loops_under(root: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(root) in line]


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


# ----------------------------------------------------------------------------------------------
# the ssh hop


def test_ssh_reaches_every_test_host_by_its_name(cloud: Cloud) -> None:
    for host in ("node1", "node2", FRONTEND):
        proc = cloud.ssh(host, "sh", "-c", 'printf "%s" "$ONE_TEST_HOST"')
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == host.encode()
    assert [h for h, _ in cloud.ssh_commands()] == ["node1", "node2", FRONTEND]


def test_hostcmd_arguments_arrive_literally_over_ssh(cloud: Cloud, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    nasty = f"{tmp_path}/dir with spaces/$(touch {canary})/`touch {canary}`/it's \"q\";*&|<>\\"
    shell = Host("node1", ssh=cloud.sshd.ssh_command)
    assert not shell.local
    out = shell.output(["printf", "%s\n", nasty, "", "--", "-n"])
    assert out == f"{nasty}\n\n--\n-n\n"
    shell.run(["mkdir", "-p", nasty])
    assert Path(nasty).is_dir()
    assert not canary.exists()
    host, command = cloud.ssh_commands()[-1]
    assert host == "node1" and command.startswith("mkdir -p ")


def test_hostcmd_failures_over_ssh(cloud: Cloud) -> None:
    shell = Host("node2", ssh=cloud.sshd.ssh_command)
    with pytest.raises(DriverError, match=r"node2: sh -c failed: boom") as info:
        shell.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert not isinstance(info.value, Transient)
    assert shell.run(["sh", "-c", "exit 3"], check=False).returncode == 3
    assert shell.ok(["true"]) and not shell.ok(["false"])
    unreachable = Host("node2", ssh=[*cloud.sshd.ssh_command, "-o", "Port=1"])
    with pytest.raises(Transient, match="ssh failed"):
        unreachable.run(["true"])


def test_ssh_hop_takes_fifteen_actions_at_once(cloud: Cloud) -> None:
    """oned runs up to 15 driver actions at once: no connection may be refused."""
    shell = Host("node2", ssh=cloud.sshd.ssh_command)
    with ThreadPoolExecutor(15) as pool:
        outs = list(pool.map(lambda i: shell.output(["sh", "-c", f"sleep 0.3; echo {i}"]), range(15)))
    assert outs == [f"{i}\n" for i in range(15)]


def test_sshd_fixture_is_a_real_server(sshd: Sshd) -> None:
    assert sshd.alive()
    assert "Server listening on 127.0.0.1 port" in sshd.log.read_text()
    proc = sshd.run("node1", "cat", input=b"through stdin")
    assert proc.returncode == 0 and proc.stdout == b"through stdin"


# ----------------------------------------------------------------------------------------------
# the oned double through onelib.oned


def test_documents_the_drivers_read(cloud: Cloud) -> None:
    cloud.make_vm(42, user={"DISKSNAPSHOT_LIMIT": "3"})
    one = _client(cloud)
    vm = one.vm(42)
    assert vm.tag == "VM" and xmldoc.text(vm, "ID") == "42"
    disks = vm.findall("TEMPLATE/DISK")
    assert [xmldoc.text(d, "DISK_ID") for d in disks] == ["0", "1", "2"]
    assert [xmldoc.text(d, "TM_MAD") for d in disks] == ["storpool"] * 3
    assert [xmldoc.text(d, "SOURCE") for d in disks] == ["one-img-7", "one-img-8", ""]
    assert [xmldoc.text(d, "CLONE") for d in disks] == ["YES", "NO", ""]
    assert xmldoc.text(disks[1], "PERSISTENT") == "YES"
    assert [xmldoc.text(disks[2], k) for k in ("TYPE", "FS", "DATASTORE_ID")] == ["fs", "ext4", "101"]
    assert xmldoc.text(vm, "TEMPLATE/CONTEXT/DISK_ID") == "3"
    assert xmldoc.text(vm, "USER_TEMPLATE/DISKSNAPSHOT_LIMIT") == "3"
    history = vm.findall("HISTORY_RECORDS/HISTORY")
    assert [xmldoc.text(history[-1], k) for k in ("HOSTNAME", "HID", "DS_ID", "TM_MAD")] == \
        ["node1", "1", "101", "storpool"]
    # the same element order as the fixture oned's document was modelled on
    fixture = etree.parse(str(ONE / "vm-42.xml")).getroot()
    assert [c.tag for c in vm] == [c.tag for c in fixture]
    assert [c.tag for c in vm.find("TEMPLATE")] == [c.tag for c in fixture.find("TEMPLATE")]

    ds = one.datastore(100)
    assert [xmldoc.text(ds, p) for p in ("DS_MAD", "TM_MAD", "TYPE", "TEMPLATE/DISK_TYPE", "TEMPLATE/BRIDGE_LIST")] \
        == ["storpool", "storpool", "0", "BLOCK", "node1"]
    assert [i.text for i in ds.iterfind("IMAGES/ID")] == ["7", "8"]
    system = one.datastore(101)
    assert [xmldoc.text(system, p) for p in ("TM_MAD", "TYPE", "TEMPLATE/TYPE")] == ["storpool", "1", "SYSTEM_DS"]

    image = one.image(7)
    assert [xmldoc.text(image, p) for p in ("SOURCE", "PERSISTENT", "DATASTORE_ID", "RUNNING_VMS")] == \
        ["one-img-7", "0", "100", "1"]
    assert [i.text for i in image.iterfind("VMS/ID")] == ["42"]

    node1 = one.host_by_name("node1")
    assert node1 is not None and xmldoc.text(node1, "ID") == "1" and xmldoc.text(node1, "STATE") == "2"
    attrs = xmldoc.template_attrs(node1.find("TEMPLATE"))
    assert attrs["SP_OURID"] == "1"
    assert attrs["SP_DEVICE_DIR"] == str(cloud.device_dir("node1"))
    assert os.path.normpath(attrs["DATASTORE_LOCATION"]) == str(cloud.ds_location("node1"))
    assert [i.text for i in node1.iterfind("VMS/ID")] == ["42"]
    assert one.host_by_name("node3") is None
    assert xmldoc.text(one.host(2), "TEMPLATE/SP_OURID") == "2"
    assert {"one.vm.info", "one.datastore.info", "one.image.info", "one.hostpool.info", "one.host.info"} <= \
        {m for m, _ in cloud.oned.calls}
    assert cloud.oned.calls[0] == ("one.vm.info", (42, False))


def test_vm_pool_short_and_extended(cloud: Cloud) -> None:
    cloud.make_vm(42)
    cloud.make_vm(43, [{"volatile": "swap", "size": 16}], host="node2")
    cloud.make_vm(44, [{"image": 7}], state=oned_sim.VM_DONE, lcm_state=0)
    one = _client(cloud)
    short = xmldoc.parse(one.call("one.vmpool.info", -2, -1, -1, -1), "pool")
    assert short.tag == "VM_POOL"
    assert [xmldoc.text(v, "ID") for v in short.iterfind("VM")] == ["42", "43"]  # not DONE
    first = short.find("VM")
    assert first.find("TEMPLATE/DISK/SOURCE") is None  # what oned's short pool body leaves out
    assert first.find("TEMPLATE/CONTEXT") is None and first.find("USER_TEMPLATE/DESCRIPTION") is None
    assert [xmldoc.text(d, "IMAGE_ID") for d in first.iterfind("TEMPLATE/DISK")] == ["7", "8", ""]
    assert xmldoc.text(short, "VM[2]/HISTORY_RECORDS/HISTORY/HOSTNAME") == "node2"
    full = one.vms()
    assert [xmldoc.text(v, "ID") for v in full.iterfind("VM")] == ["42", "43"]
    assert xmldoc.text(full, "VM/TEMPLATE/DISK/SOURCE") == "one-img-7"
    assert [xmldoc.text(v, "ID") for v in one.vms(state=-2).iterfind("VM")] == ["42", "43", "44"]
    assert [xmldoc.text(v, "ID") for v in one.vms(state=oned_sim.VM_DONE).iterfind("VM")] == ["44"]
    assert [xmldoc.text(v, "ID") for v in xmldoc.parse(one.call("one.vmpool.info", -2, 43, 43, -1), "p")] == ["43"]
    page = xmldoc.parse(one.call("one.vmpool.infoextended", -2, 1, -2, -2), "p")  # offset 1, 2 per page
    assert [xmldoc.text(v, "ID") for v in page] == ["43", "44"]


def test_image_update_allocate_and_vm_update(cloud: Cloud) -> None:
    cloud.make_image(7, size_mb=128, template={"MD5": "x", "DEV_PREFIX": "vd"})
    one = _client(cloud)
    one.image_update(7, 'SP_SNAP = "one-img-7-snap0"\nMD5="abc"\nDESC = "two\\"words\\" here"', append=True)
    tpl = xmldoc.template_attrs(one.image(7).find("TEMPLATE"))
    assert tpl == {"DEV_PREFIX": "vd", "MD5": "abc", "SP_SNAP": "one-img-7-snap0", "DESC": 'two"words" here'}
    one.image_update(7, "ONLY = 1", append=False)
    assert xmldoc.template_attrs(one.image(7).find("TEMPLATE")) == {"ONLY": "1"}
    assert cloud.oned.calls[0] == ("one.image.update", (7, 'SP_SNAP = "one-img-7-snap0"\nMD5="abc"\n'
                                                            'DESC = "two\\"words\\" here"', 1))

    new = one.image_allocate('NAME = "restored"\nTYPE = DATABLOCK\nSOURCE = "one-img-99"\nSIZE = 64\n'
                             'PERSISTENT = YES\nFORMAT = raw\nFROM_TRASH = "one-img-7-42-0"', 100)
    assert new == 8
    image = one.image(new)
    assert [xmldoc.text(image, p) for p in ("NAME", "TYPE", "SOURCE", "SIZE", "PERSISTENT", "STATE", "DATASTORE_ID",
                                            "TEMPLATE/FROM_TRASH")] == \
        ["restored", "2", "one-img-99", "64", "1", "1", "100", "one-img-7-42-0"]
    assert [i.text for i in one.datastore(100).iterfind("IMAGES/ID")] == ["7", "8"]
    with pytest.raises(DriverError, match=r"NAME is already taken by IMAGE 8"):
        one.image_allocate('NAME = "restored"', 100)
    with pytest.raises(NotFound, match=r"Error getting datastore \[55\]"):
        one.image_allocate('NAME = "x"', 55)
    with pytest.raises(DriverError, match="image datastore"):
        one.image_allocate('NAME = "x"', 101)

    cloud.make_vm(42)
    assert one.call("one.vm.update", 42, "SP_LAST = [ ID = 3, WHEN = \"now\" ]\nMY_ADDON_QOS = silver", 1) == 42
    ut = one.vm(42).find("USER_TEMPLATE")
    assert xmldoc.text(ut, "MY_ADDON_QOS") == "silver" and xmldoc.text(ut, "SP_LAST/WHEN") == "now"
    assert xmldoc.text(ut, "DESCRIPTION") == "fixture VM for driver tests"


def test_errors_have_oneds_shapes(cloud: Cloud) -> None:
    proxy = xmlrpc.client.ServerProxy(cloud.oned.url)
    assert proxy.one.vm.info(ONE_AUTH, 42) == \
        [False, "[one.vm.info] Error getting virtual machine [42].", NO_EXISTS, 42, -1]
    assert proxy.one.host.info("oneadmin:wrong", 1) == \
        [False, "[one.host.info] User couldn't be authenticated, aborting call.", 0x0100, -1, -1]
    reply = proxy.one.datastore.info(ONE_AUTH, 100)
    assert reply[0] is True and reply[2] == 0 and reply[1].startswith("<DATASTORE>")
    with pytest.raises(xmlrpc.client.Fault, match="Type mismatch"):
        proxy.one.vm.info(ONE_AUTH, "42")
    with pytest.raises(xmlrpc.client.Fault, match="not defined"):
        proxy.one.vm.nosuch(ONE_AUTH, 42)

    one = _client(cloud)
    with pytest.raises(NotFound, match=r"Error getting virtual machine \[42\]"):
        one.vm(42)
    for call in (lambda: one.image(1), lambda: one.datastore(7), lambda: one.host(9)):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(DriverError, match="couldn't be authenticated") as info:
        _client(cloud, "oneadmin:wrong").datastore(100)
    assert not isinstance(info.value, (NotFound, Transient))
    cloud.oned.fail("one.datastore.info", code=NO_EXISTS, message="Error getting datastore [100].")
    with pytest.raises(NotFound):
        one.datastore(100)
    assert xmldoc.text(one.datastore(100), "ID") == "100"  # one failure only
    cloud.oned.fail("one.datastore.info", code=oned_sim.INTERNAL, message="db is locked")
    with pytest.raises(DriverError, match="db is locked") as info:
        one.datastore(100)
    assert not isinstance(info.value, NotFound)


def test_transient_when_oned_does_not_answer(tmp_path: Path) -> None:
    with OnedDouble(auth=ONE_AUTH) as double:
        double.add_datastore(oned_sim.datastore_document(100, "ds"))
        one = Oned(double.url, ONE_AUTH, timeout=0.5)
        double.fail("one.datastore.info", mode="drop")  # a read is asked once more after a reset
        assert xmldoc.text(one.datastore(100), "ID") == "100"
        assert double.count("one.datastore.info") == 2
        double.fail("one.datastore.info", mode="drop", times=2)
        with pytest.raises(Transient, match="unreachable"):
            one.datastore(100)
        double.fail("one.datastore.info", mode="delay", delay=1.5)
        with pytest.raises(Transient, match="unreachable"):
            Oned(double.url, ONE_AUTH, timeout=0.3).datastore(100)
        assert xmldoc.text(one.datastore(100), "ID") == "100"
        url = double.url
    with pytest.raises(Transient, match="unreachable"):
        Oned(url, ONE_AUTH, timeout=2).datastore(100)


def test_endpoint_and_credentials_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".one").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ONE_XMLRPC", raising=False)
    monkeypatch.delenv("ONE_AUTH", raising=False)
    assert oned_client.endpoint() == "http://localhost:2633/RPC2"
    with pytest.raises(DriverError, match=r"no OpenNebula credentials in ~/.one/one_auth"):
        oned_client.session()
    with OnedDouble(auth="oneadmin:from-home") as double:
        double.add_host("node1", 1, {"SP_OURID": 1})
        (home / ".one" / "one_endpoint").write_text(f"{double.url}\nignored second line\n")
        (home / ".one" / "one_auth").write_text("oneadmin:from-home\n")
        one = Oned()
        assert one.url == double.url
        assert xmldoc.text(one.host(1), "NAME") == "node1"
        # ONE_XMLRPC and ONE_AUTH win over the files
        auth = tmp_path / "auth"
        auth.write_text("oneadmin:from-env\n")
        monkeypatch.setenv("ONE_AUTH", str(auth))
        monkeypatch.setenv("ONE_XMLRPC", "http://127.0.0.1:9/RPC2")
        assert Oned().url == "http://127.0.0.1:9/RPC2"
        monkeypatch.setenv("ONE_XMLRPC", double.url)
        with pytest.raises(DriverError, match="couldn't be authenticated"):
            Oned().hosts()
        double.auth = "oneadmin:from-env"
        assert xmldoc.text(Oned().hosts(), "HOST/NAME") == "node1"
        auth.write_text("no colon here\n")
        with pytest.raises(DriverError, match="no OpenNebula credentials"):
            Oned().hosts()


def test_template_parser() -> None:
    assert parse_template('A = 1\nb = "x y"\n# comment\nV = [ K = "1", L = two ]\nE = ""\nQ="a\\"b\\\\c"') == [
        ("A", "1"), ("B", "x y"), ("V", {"K": "1", "L": "two"}), ("E", ""), ("Q", 'a"b\\c')]
    assert parse_template('M = "line1\nline2"') == [("M", "line1\nline2")]
    assert parse_template("<TEMPLATE><A>1</A><V><K>2</K></V></TEMPLATE>") == [("A", "1"), ("V", {"K": "2"})]
    with pytest.raises(ValueError):
        parse_template("A = ]")


# ----------------------------------------------------------------------------------------------
# StorPool simulator wiring, configuration, the driver context


def test_per_host_device_dirs(cloud: Cloud) -> None:
    data = os.urandom(4096)
    cloud.make_volume("one-img-7", 16, data=data)
    assert cloud.sim.inventory()["volumes"]["one-img-7"]["template"] == "one-ds-100"
    assert not list(cloud.device_dir(FRONTEND).iterdir())  # written through a detached-again attachment
    link = cloud.attach("one-img-7", "node1")
    assert link == cloud.device_dir("node1") / "one-img-7" and link.is_symlink()
    assert os.readlink(link).startswith("/dev/loop")
    assert not (cloud.device_dir("node2") / "one-img-7").exists()
    assert not (cloud.device_dir(FRONTEND) / "one-img-7").exists()
    assert Cloud.sha256(link, 4096) == Cloud.sha256(cloud.sim.volume_path("one-img-7"), 4096)
    assert Cloud.sha256(link, 4096) == hashlib.sha256(data).hexdigest()
    # the same volume on node2 too: detaching it from node1 leaves node2's link
    cloud.attach("one-img-7", "node2")
    cloud.detach("one-img-7", "node1")
    assert not link.exists() and (cloud.device_dir("node2") / "one-img-7").is_symlink()
    assert {a["client"] for a in cloud.sim.inventory()["attachments"]} == {2}
    assert set(cloud.sim.inventory()["templates"]) == {"one-ds-100", "one-ds-101"}


def test_driver_context_from_the_environment(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in cloud.env.items():
        monkeypatch.setenv(key, value)
    config = Config.load()
    assert config.get("SP_API_HTTP_PORT") == str(cloud.sim.port)
    assert config.get("LOCK_DIR") == str(cloud.root / "locks")
    assert config.seconds("DELAY_DELETE") == 48 * 3600
    one = Oned()
    drv = Driver("storpool", one.datastore(100), oned=one, config=config)
    assert drv.placement() == "one-ds-100"
    assert drv.bridge() == "node1"  # the datastore's BRIDGE_LIST
    node2 = drv.host("node2")
    assert (node2.client, node2.device_dir) == ("2", str(cloud.device_dir("node2")))
    fe = drv.host(FRONTEND)  # not an OpenNebula host: storpool.conf's section, config's device dir
    assert (fe.client, fe.device_dir) == ("3", str(cloud.device_dir(FRONTEND)))
    assert drv.host("").client == "3"  # this machine's own hostname section
    assert drv.backend.get("one-img-7") is None
    cloud.make_volume("one-img-7", 8)
    found = drv.backend.get("one-img-7")
    assert found is not None and found.size == 8 * 2**20
    assert drv.shell("node1").output(["echo", "via", "SSH_COMMAND"]) == "via SSH_COMMAND\n"
    assert cloud.ssh_commands()[-1] == ("node1", "echo via SSH_COMMAND")
    cloud.configure(DELAY_DELETE="1s", LOCK_DIR=None)
    assert Config.load().get("DELAY_DELETE") == "1s" and Config.load().get("LOCK_DIR") == ""


# ----------------------------------------------------------------------------------------------
# the runner


ENTRY = {"tm": "from tm.entry import tm_main\ntm_main()\n",
         "datastore": "from datastore.entry import ds_main\nds_main()\n"}
ECHO = textwrap.dedent("""\
    import json, os, sys
    print(json.dumps({"argv": sys.argv[1:], "stdin": sys.stdin.buffer.read().decode(), "cwd": os.getcwd(),
                      "env": {k: os.environ.get(k) for k in ("ONE_XMLRPC", "ONE_AUTH", "ONE_TWEAKS_CONF", "HOME")}}))
    """)


def _remotes(tmp_path: Path, kind: str, action: str, body: str) -> Path:
    remotes = tmp_path / "remotes"
    path = remotes / kind / "storpool" / action
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env python3\n" + body)
    path.chmod(0o755)
    return remotes


def test_run_tm_calls_the_executable_as_one_tm(cloud: Cloud, tmp_path: Path) -> None:
    remotes = _remotes(tmp_path, "tm", "echo", ECHO)
    arg = cloud.tm_path("node1", 42, 0)
    assert arg == f"node1:{cloud.root}/node1//datastores/101/42/disk.0"
    proc = cloud.run_tm("echo", f"{FRONTEND}:one-img-7", arg, "42", "100", stdin=b"PFZNLz4=", remotes=remotes)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["argv"] == [f"{FRONTEND}:one-img-7", arg, "42", "100"]
    assert seen["stdin"] == "PFZNLz4="
    assert seen["cwd"] == str(cloud.home)
    assert seen["env"] == {"ONE_XMLRPC": cloud.oned.url, "ONE_AUTH": str(cloud.auth_file),
                           "ONE_TWEAKS_CONF": str(cloud.conf), "HOME": str(cloud.home)}
    assert cloud.auth_file.read_text().strip() == ONE_AUTH
    remotes = _remotes(tmp_path, "tm", "nosuch", ENTRY["tm"])
    proc = cloud.run_tm("nosuch", arg, "42", "101", remotes=remotes)
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines() == ["TM action 'nosuch' is not implemented by storpool"]
    assert proc.stdout == b""


def test_run_ds_every_calling_form(cloud: Cloud, tmp_path: Path) -> None:
    cloud.make_image(9, size_mb=32)
    message = cloud.ds_message(9, extra={"DATASTORE_LOCATION": cloud.hosts[FRONTEND].ds_location})
    assert [c.tag for c in message] == ["IMAGE", "DATASTORE", "DATASTORE_LOCATION"]
    assert [i.text for i in message.iterfind("DATASTORE/IMAGES/ID")] == ["9"]
    raw = etree.tostring(message)
    b64 = base64.b64encode(raw).decode()
    remotes = _remotes(tmp_path, "datastore", "echo", ECHO)
    expected = {"6.8": (["9"], b64), "6.6.3": (["-", "9"], b64), "6.6": ([b64, "9"], "")}
    for form, (argv, stdin) in expected.items():
        seen = json.loads(cloud.run_ds("echo", message, 9, form=form, remotes=remotes).stdout)
        assert (seen["argv"], seen["stdin"]) == (argv, stdin), form
    assert "\n" not in b64
    seen = json.loads(cloud.run_ds("echo", b"not base64!", 9, b64=False, remotes=remotes).stdout)
    assert seen["stdin"] == "not base64!"
    remotes = _remotes(tmp_path, "datastore", "nosuch", ENTRY["datastore"])
    for form in ("6.8", "6.6.3", "6.6"):
        proc = cloud.run_ds("nosuch", message, 9, form=form, remotes=remotes)
        assert proc.returncode == 1, form
        assert proc.stderr.decode().splitlines() == ["datastore action 'nosuch' is not implemented by storpool"]
    proc = cloud.run_ds("nosuch", b"%%%", 9, b64=False, remotes=remotes)
    assert proc.returncode == 1 and len(proc.stderr.decode().splitlines()) == 1
    assert "not valid base64" in proc.stderr.decode()


def test_missing_executable_is_a_clear_failure(cloud: Cloud) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"tm/storpool/no-such-action does not exist"):
        cloud.run_tm("no-such-action")


# ----------------------------------------------------------------------------------------------
# teardown


def test_teardown_leaves_nothing_behind(tmp_path: Path, sshd: Sshd) -> None:
    root = tmp_path / "cloud"
    # only this test's loop devices: other pytest sessions on the machine may attach their own
    before = _loops_under(tmp_path)
    with build_cloud(root, sshd) as built:
        built.make_volume("one-img-7", 8, data=b"x" * 512)
        links = [built.attach("one-img-7", "node1"), built.attach("one-img-7", "node2")]
        built.make_volume("one-sys-42-0-raw", 8)
        links.append(built.attach("one-sys-42-0-raw", FRONTEND))
        assert all(link.is_symlink() for link in links)
        assert len(_loops_under(root)) == 2  # one loop device per volume, links per client
        ports = (built.sim.port, built.oned.port)
    assert before == [] and _loops_under(tmp_path) == []
    assert not any(link.exists() or link.is_symlink() for link in links)
    assert all(_refused(port) for port in ports)
    assert sshd.alive()  # session-scoped: still serving the next test
