"""Hostile input through the driver executables, run as oned runs them (storage_env's cloud:
the StorPool simulator, the oned double, a real ssh hop; linstor_env's for LINSTOR).

- Digit strings ``int()`` cannot take (``²``, 5,000 digits) or takes wrongly (``٣``) in
  argv, templates and the configuration: one line quoting the value, exit 1, never
  "internal error".
- Secrets never reach syslog: the test binds its own syslog socket (ONE_TWEAKS_SYSLOG_SOCKET)
  and reads every line a driver sends while oned <= 6.6.1 passes the datastore (with its
  SP_AUTH_TOKEN) as a base64 argument.
- BRIDGE_LIST host names are checked like every host name; SSH_COMMAND is split as a shell
  would split it wherever a host is reached.
"""

from __future__ import annotations

import base64
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ONE
from linstor_env import LinstorCloud, lcloud
from lxml import etree
from sim import oned as oned_sim
from sim.frontend import Frontend
from storage_env import IMAGE_DS, REPO, SP_TOKEN, SYSTEM_DS, Cloud, cloud, sshd
from test_deploy_tweaks import FAKE_UUID, install_standin, run_deploy
from test_hotplug_rules import _register as hotplug_vm
from test_vmm_disks import run_vmm

FIXTURES = (cloud, sshd, lcloud)
VM = 42
LONG = "9" * 5000
UNICODE = ("²", "\u0663", "\uff11")  # superscript 2 (isdigit, int() refuses); Arabic-Indic 3, fullwidth 1 (int() takes)


def one_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The failure's single stderr line (exit 1, no traceback, no internal error)."""
    err = proc.stderr.decode(errors="replace")
    lines = [ln for ln in err.splitlines() if not ln.startswith("INFO: ")]
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, err[:2000])
    assert "internal error" not in err and "Traceback" not in err
    assert len(lines[0]) < 300, lines[0]
    return lines[0]


def quoted(raw: str) -> str:
    """How a message quotes a value (long ones shortened)."""
    return repr(raw) if len(raw) <= 40 else f"{raw[:40]!r}... ({len(raw)} characters)"


def refused(what: str, raw: str, unit: str = "a whole number", low: int = 0, high: int = 10**9) -> str:
    """The line for ``raw`` refused as ``what``: digits out of range name the range."""
    text = raw.strip().removeprefix("-")
    span = f" from {low} to {high}" if text.isascii() and text.isdigit() else ""
    sep = "" if what.endswith("=") else " "
    return f"{what}{sep}{quoted(raw)} is not {unit}{span}"


def set_attr(parent: etree._Element, path: str, value: str) -> None:
    el = parent.find(path)
    if el is None:
        el = etree.SubElement(parent, path)
    el.text = value


def vm_with_disk(c: Cloud) -> None:
    """VM 42 with a clone of image 7 as disk 0 on node1 (made by the TM driver)."""
    c.make_volume("one-img-7", 16)
    c.make_vm(VM, disks=[{"image": 7, "size": 16}], context=False)
    proc = c.run_tm("clone", "one-fe:one-img-7", c.tm_path("node1", VM, 0), str(VM), str(IMAGE_DS))
    assert proc.returncode == 0, proc.stderr.decode()


BAD = [*UNICODE, LONG, "1_0", "12x"]


# --- numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", BAD)
def test_disksnapshot_limit_of_the_vm(cloud: Cloud, raw: str) -> None:
    vm_with_disk(cloud)
    set_attr(cloud.oned.vm(VM).find("USER_TEMPLATE"), "DISKSNAPSHOT_LIMIT", raw)
    line = one_line(cloud.run_tm("snap_create", cloud.tm_path("node1", VM, 0), "0", str(VM), str(IMAGE_DS)))
    assert line == refused("DISKSNAPSHOT_LIMIT=", raw)
    assert not [n for n in cloud.sim.inventory()["snapshots"] if n.startswith("one-img-7-42-0-snap")]


@pytest.mark.parametrize("raw", ["²", LONG])
def test_api_timeout_in_the_configuration(cloud: Cloud, raw: str) -> None:
    vm_with_disk(cloud)
    cloud.configure(API_TIMEOUT=raw)
    line = one_line(cloud.run_tm("snap_create", cloud.tm_path("node1", VM, 0), "0", str(VM), str(IMAGE_DS)))
    assert line == refused("configuration API_TIMEOUT=", raw)


def test_api_timeout_out_of_range(cloud: Cloud) -> None:
    """Digits, but a timeout no socket can hold."""
    vm_with_disk(cloud)
    cloud.configure(API_TIMEOUT="99999999999999999999")
    line = one_line(cloud.run_tm("snap_create", cloud.tm_path("node1", VM, 0), "0", str(VM), str(IMAGE_DS)))
    assert line == "configuration API_TIMEOUT='99999999999999999999' is not a whole number from 0 to 1000000000"


@pytest.mark.parametrize("form", ["6.8", "6.6"])
@pytest.mark.parametrize("raw", ["²", "-²", LONG, "٣"])
def test_datastore_action_id_in_argv(cloud: Cloud, raw: str, form: str) -> None:
    line = one_line(cloud.run_ds("monitor", cloud.ds_message(None), raw, form=form))
    assert line == refused("monitor: id", raw, "a number", -(2**31 - 1), 2**31 - 1)


@pytest.mark.parametrize("raw", ["²", LONG])
def test_download_timeout_of_the_datastore(cloud: Cloud, raw: str) -> None:
    """datastore/imageds.py seconds(): DOWNLOAD_TIMEOUT of a stat of a URL (read before any
    connection is made)."""
    set_attr(cloud.oned.datastore(IMAGE_DS).find("TEMPLATE"), "DOWNLOAD_TIMEOUT", raw)
    img = oned_sim.image_document(60, ds_id=IMAGE_DS, path="http://127.0.0.1:9/disk.raw")
    line = one_line(cloud.run_ds("stat", cloud.ds_message(img), 60))
    assert line == refused("DOWNLOAD_TIMEOUT=", raw, "a number of seconds", 1)


@pytest.mark.parametrize("raw", ["²", LONG])
def test_image_size_in_the_payload(cloud: Cloud, raw: str) -> None:
    img = oned_sim.image_document(61, ds_id=IMAGE_DS, size_mb=16)
    set_attr(img, "SIZE", raw)
    line = one_line(cloud.run_ds("mkfs", cloud.ds_message(img), 61))
    assert line == refused("mkfs: IMAGE: SIZE=", raw, "a number", -(2**63 - 1), 2**63 - 1)
    assert "one-img-61" not in cloud.sim.inventory()["volumes"]


@pytest.mark.parametrize("raw", ["²", LONG])
def test_vmsnapshot_limit_of_the_vm(cloud: Cloud, raw: str) -> None:
    """vmm/vmsnap.py: VMSNAPSHOT_LIMIT of a VM snapshot (snapshot_create-tweaks)."""
    vm_with_disk(cloud)
    set_attr(cloud.oned.vm(VM).find("USER_TEMPLATE"), "VMSNAPSHOT_LIMIT", raw)
    root = etree.Element("VMM_DRIVER_ACTION_DATA")
    etree.SubElement(root, "HOST").text = "node1"
    etree.SubElement(root, "MIGR_HOST")
    etree.SubElement(root, "DEPLOY_ID").text = "one-42"
    root.append(cloud.oned.served("vm", VM))
    root.append(cloud.oned.served("datastore", SYSTEM_DS))
    proc = subprocess.run([sys.executable, str(REPO / "vmm" / "kvm" / "snapshot_create-tweaks"), "one-42", "0",
                           str(VM), "node1"], input=base64.b64encode(etree.tostring(root)), capture_output=True,
                          env=cloud.env, cwd=cloud.home, timeout=120, check=False)
    assert one_line(proc) == refused("VM 42: VMSNAPSHOT_LIMIT=", raw)


@pytest.mark.parametrize("raw", ["²", LONG])
def test_vm_id_of_deploy_tweaks(cloud: Cloud, raw: str, tmp_path: Path) -> None:
    deployment = tmp_path / "deployment.0"
    deployment.write_text("<domain type='kvm'/>")
    proc = subprocess.run([sys.executable, str(REPO / "vmm" / "kvm" / "deploy-tweaks"), str(deployment), "node1",
                           raw, "node1"], capture_output=True, env=cloud.env, cwd=cloud.home, timeout=120,
                          check=False)
    assert one_line(proc) == refused("VM id", raw, "a number", 0, 2**31 - 1)


@pytest.mark.parametrize("raw", ["²", LONG])
def test_storpool_client_id_of_a_host(cloud: Cloud, raw: str) -> None:
    vm_with_disk(cloud)
    set_attr(cloud.oned.host("node2").find("TEMPLATE"), "SP_OURID", raw)
    line = one_line(cloud.run_tm("mv", cloud.tm_path("node1", VM, 0), cloud.tm_path("node2", VM, 0), str(VM),
                                 str(SYSTEM_DS)))
    assert line == refused("SP_OURID of host node2:", raw, "a client id", 0, 2**31 - 1)


@pytest.mark.parametrize("raw", ["²", LONG])
def test_linstor_replica_count_of_the_datastore(lcloud: LinstorCloud, raw: str) -> None:
    """datastore/backends/linstor.py: REPLICA_COUNT / AUTO_PLACE of the datastore."""
    set_attr(lcloud.oned.datastore(IMAGE_DS).find("TEMPLATE"), "AUTO_PLACE", raw)
    img = oned_sim.image_document(62, ds_id=IMAGE_DS, ds_name="linstor-images", size_mb=16)
    line = one_line(lcloud.run_ds("mkfs", lcloud.ds_message(img), 62))
    assert line == refused("AUTO_PLACE=", raw, "a number of replicas", 1)
    assert not [n for n in lcloud.inv() if "62" in n]


@pytest.mark.parametrize("raw", ["²", LONG])
def test_attach_nic_virtio_queues(cloud: Cloud, raw: str) -> None:
    """vmm/actions/attach_nic.py: VIRTIO_QUEUES of the attached NIC (nothing reaches libvirt)."""
    vm = hotplug_vm(cloud, 7393, (71, 72, 73))
    nic = vm.find("TEMPLATE/NIC")
    etree.SubElement(nic, "ATTACH").text = "YES"
    etree.SubElement(nic, "VIRTIO_QUEUES").text = raw
    argv = ["one-7393", nic.findtext("MAC") or "", "-", "virtio", "ethernet", "one-7393-0", "7393", "node1"]
    proc = run_vmm(cloud, "attach_nic-tweaks", *argv, stdin=base64.b64encode(Frontend(cloud, nics=True).message(7393)))
    assert one_line(proc) == refused("NIC VIRTIO_QUEUES=", raw, "a whole number or auto", 1, 1024)
    assert not any("virsh" in cmd for _, cmd in cloud.ssh_commands())


def test_migrate_options_numbers() -> None:
    """onelib/hypervisor.py: a number in MIGRATE_OPTIONS (the configuration)."""
    from onelib.errors import DriverError
    from onelib.hypervisor import migrate_options

    with pytest.raises(DriverError) as exc:
        migrate_options(f"--bandwidth={LONG}")
    assert str(exc.value) == refused("configuration MIGRATE_OPTIONS: --bandwidth", LONG, "a number", 0, 2**63 - 1)


# --- syslog ----------------------------------------------------------------------------------------


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket the drivers log to instead of /dev/log."""
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0)
    try:
        yield sock, path
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536).decode(errors="replace"))
        except BlockingIOError:
            return out


@pytest.mark.parametrize(("kind", "action"), [("ds", "monitor"), ("ds", "stat"), ("tm", "monitor")])
def test_syslog_gets_no_payload_and_no_secret(cloud: Cloud, syslog_socket: tuple[socket.socket, str],
                                              kind: str, action: str) -> None:
    """OpenNebula <= 6.6.1 passes DS_DRIVER_ACTION_DATA (the datastore's SP_AUTH_TOKEN inside) as
    base64 in argv; the syslog lines show the action and the id, never the payload."""
    sock, path = syslog_socket
    cloud.env["ONE_TWEAKS_SYSLOG_SOCKET"] = path
    ds_id = IMAGE_DS if kind == "ds" else SYSTEM_DS
    set_attr(cloud.oned.datastore(ds_id).find("TEMPLATE"), "SP_AUTH_TOKEN", SP_TOKEN)
    img = oned_sim.image_document(63, ds_id=IMAGE_DS, path="/nonexistent/disk.raw") if action == "stat" else None
    message = cloud.ds_message(img, ds_id)
    payload = base64.b64encode(etree.tostring(message)).decode()
    assert SP_TOKEN.encode() in etree.tostring(message)
    if kind == "ds":
        proc = cloud.run_ds(action, message, ds_id if action == "monitor" else 63, form="6.6")
    else:
        proc = cloud.run_tm(action, payload, str(ds_id))
    assert proc.returncode == (0 if action == "monitor" else 1), proc.stderr.decode()
    lines = received(sock)
    ident = f"one-tweaks-{kind}-storpool-{action}"
    obj = ds_id if action == "monitor" else 63
    assert f"{ident}[" in lines[0] and lines[0].endswith(f": start <{len(payload)} characters not logged> {obj}")
    assert lines[-1].endswith(": done" if action == "monitor" else "is not an image PATH oned accepts") or \
        ": failed: " in lines[-1]
    for line in lines:
        assert SP_TOKEN not in line and payload[:24] not in line, line
    assert SP_TOKEN not in proc.stderr.decode()


# --- hosts and ssh ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bridges", ["-oProxyCommand=touch${IFS}/tmp/pwned node1", "node1 -F/etc/passwd"])
def test_every_bridge_list_host_is_checked(cloud: Cloud, bridges: str) -> None:
    """A DS copy stages data on a BRIDGE_LIST host; every name of the list is checked, the one
    picked and the others, before any host is reached."""
    set_attr(cloud.oned.datastore(IMAGE_DS).find("TEMPLATE"), "BRIDGE_LIST", bridges)
    src = cloud.root / "src.raw"
    src.write_bytes(b"\0" * 2**20)
    set_attr(cloud.oned.datastore(IMAGE_DS).find("TEMPLATE"), "SAFE_DIRS", str(cloud.root))
    img = oned_sim.image_document(64, ds_id=IMAGE_DS, path=str(src), size_mb=1)
    bad = next(h for h in bridges.split() if h.startswith("-"))
    mark = cloud.sshd.log_offset()
    line = one_line(cloud.run_ds("cp", cloud.ds_message(img), 64))
    assert line == f"BRIDGE_LIST: host name {bad!r} is not acceptable"
    assert cloud.sshd.commands(mark) == []


def test_bridge_of_a_tm_action_is_checked(lcloud: LinstorCloud) -> None:
    """datastore/driver.py bridge(): the host a LINSTOR copy runs on (a TM clone with
    CLONE_MODE=copy copies on the image datastore's bridge); the half-made clone is removed."""
    lcloud.make_volume("one-image-7", 16)
    lcloud.make_image(7, size_mb=16)
    set_attr(lcloud.oned.datastore(IMAGE_DS).find("TEMPLATE"), "BRIDGE_LIST", "-oProxyCommand=x node1")
    set_attr(lcloud.oned.datastore(IMAGE_DS).find("TEMPLATE"), "CLONE_MODE", "copy")
    lcloud.make_vm(VM, [{"image": 7, "size": 16}], context=False)
    mark = lcloud.sshd.log_offset()
    line = one_line(lcloud.run_tm("clone", "one-fe:/dev/drbd/by-res/one-image-7/0", lcloud.tm_path("node1", VM, 0),
                                  str(VM), str(IMAGE_DS)))
    assert line == "BRIDGE_LIST: host name '-oProxyCommand=x' is not acceptable"
    assert "one-vm-42-disk-0" not in lcloud.inv()
    assert lcloud.sshd.commands(mark) == []


def test_ssh_command_is_split_as_a_shell_splits_it(cloud: Cloud, tmp_path: Path) -> None:
    """SSH_COMMAND with a quoted argument (an ssh_config path with a space) works for the
    deploy as for every other action (deploy-tweaks used str.split)."""
    spaced = tmp_path / "ssh config"
    spaced.write_text(cloud.ssh_config.read_text())
    words = shlex.split(cloud.settings["SSH_COMMAND"])
    words[words.index("-F") + 1] = str(spaced)
    cloud.configure(SSH_COMMAND=shlex.join(words))
    install_standin(cloud, create=False)
    cloud.make_vm(VM)
    proc, _ = run_deploy(cloud, (ONE / "deployment.0.xml").read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == FAKE_UUID + "\n"
    assert (cloud.vm_dir("node1", VM) / "deployment.0").is_file()


def test_ssh_command_with_unbalanced_quotes_is_one_line(cloud: Cloud) -> None:
    vm_with_disk(cloud)
    cloud.configure(SSH_COMMAND="ssh -F '/etc/one/ssh config")
    line = one_line(cloud.run_tm("mv", cloud.tm_path("node1", VM, 0), cloud.tm_path("node2", VM, 0), str(VM),
                                 str(SYSTEM_DS)))
    assert line == "configuration SSH_COMMAND=\"ssh -F '/etc/one/ssh config\": No closing quotation"
