"""The world the storage driver tests run in: a StorPool API simulator, a test double of oned,
a real OpenSSH server standing in for the hosts, and a runner that calls the driver executables
exactly as oned does.

Import the fixtures into a test module and name them once so ruff sees them used::

    from storage_env import cloud, sshd
    FIXTURES = (cloud, sshd)

Fixtures
    sshd (session)   a real ``/usr/sbin/sshd -D`` on 127.0.0.1 and a free port, with throwaway
                     host and client keys; its ssh_config maps the host names node1, node2 and
                     one-fe (the front-end) to it. Fails (never skips) without openssh-server:
                     run ``.ci/setup-storage``. Stopped by PID at the end of the session.
    cloud            a ``Cloud`` for one test (see the class): simulator with clients 1=node1,
                     2=node2, 3=one-fe, each with its own device dir; StorPool templates
                     one-ds-100 and one-ds-101; the oned double with datastores 100 (image) and
                     101 (system), hosts node1 (ID 1) and node2 (ID 2); the driver configuration
                     file; the environment of driver processes. Everything is stopped at teardown
                     (the simulator detaches its loop devices).

Hosts share this machine's filesystem, but OpenNebula gives every host the same system
datastore path. So each host has its own DATASTORE_LOCATION, ``<root>/<host>//datastores``
(double slash like oned's default ``/var/lib/one//datastores``), carried by the double's host
documents as TEMPLATE/DATASTORE_LOCATION (OpenNebula's per-host override); the front-end
one-fe has its own too. ``cloud.vm_dir("node1", 42)`` is node1's ``.../101/42``.

Outside a fixture: ``with sshd_server(dir) as server`` and ``with build_cloud(dir, server) as cloud``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import getpass
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import drivers
import pytest
from lxml import etree
from sim import oned as oned_sim
from sim.oned import OnedDouble
from sim.storpool import StorPoolSim

REPO = Path(__file__).resolve().parent.parent
SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
LIBVIRT_CLIENT_LOG = "libvirt-client.log"
SETUP_HINT = "run .ci/setup-storage (installs openssh-server, openssh-client, genisoimage, qemu-utils)"
TEST_HOSTS = ("node1", "node2", "one-fe")
FRONTEND = "one-fe"
SP_TOKEN = "7351234598000001"
ONE_AUTH = "oneadmin:opennebula-test"
IMAGE_DS, SYSTEM_DS = 100, 101
IMAGE_DS_NAME, SYSTEM_DS_NAME = "storpool-images", "storpool-system"
MiB = 2**20
DS_FORMS = ("6.8", "6.6.3", "6.6")
LOOP_WAIT = 5.0


# ----------------------------------------------------------------------------------------------
# sshd


@dataclass
class Sshd:
    """A running test sshd; ``ssh_command`` is what SSH_COMMAND holds for the drivers."""

    dir: Path
    port: int
    config: Path          # sshd_config
    ssh_config: Path      # client config: Host node1 node2 one-fe
    identity: Path        # client private key
    log: Path             # sshd -E log
    command_log: Path     # every command run through it: "<host> <base64 command>" lines
    proc: subprocess.Popen[bytes]

    @property
    def ssh_command(self) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config)]

    def run(self, host: str, *argv: str, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """``argv`` on ``host`` through ssh, each argument quoted (what arrives is literal)."""
        cmd = [*self.ssh_command, host, "--", shlex.join(argv)]
        return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, check=False)

    def commands(self, since: int = 0) -> list[tuple[str, str]]:
        """(host alias, command line) of every command sshd ran, from byte offset ``since``."""
        out = []
        with open(self.command_log, "rb") as fh:
            fh.seek(since)
            for line in fh.read().decode().splitlines():
                host, _, encoded = line.partition(" ")
                out.append((host, base64.b64decode(encoded).decode(errors="replace")))
        return out

    def log_offset(self) -> int:
        return self.command_log.stat().st_size

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _keygen(path: Path) -> None:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "one-tweaks-test", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)


FORCE_COMMAND = """#!/bin/sh
# ForceCommand of the test sshd: record the command with the host alias the client named
# (ssh_config SetEnv), then run it as sshd itself would ($SHELL -c).
printf '%s %s\\n' "${ONE_TEST_HOST:--}" "$(printf '%s' "$SSH_ORIGINAL_COMMAND" | base64 -w0)" >> LOGFILE
if [ -z "${SSH_ORIGINAL_COMMAND+x}" ]; then
    exec "${SHELL:-/bin/sh}" -l
fi
exec "${SHELL:-/bin/sh}" -c "$SSH_ORIGINAL_COMMAND"
"""


@contextlib.contextmanager
def sshd_server(directory: Path, hosts: Sequence[str] = TEST_HOSTS) -> Iterator[Sshd]:
    """Start sshd on 127.0.0.1 with everything under ``directory``; stop it by PID."""
    if not os.access(SSHD, os.X_OK):
        pytest.fail(f"{SSHD} is missing: {SETUP_HINT}", pytrace=False)
    if shutil.which("ssh") is None or shutil.which(SSH_KEYGEN) is None:
        pytest.fail(f"ssh or ssh-keygen is missing: {SETUP_HINT}", pytrace=False)
    directory.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    host_key, identity = directory / "ssh_host_ed25519_key", directory / "id_ed25519"
    _keygen(host_key)
    _keygen(identity)
    authorized = directory / "authorized_keys"
    authorized.write_bytes(identity.with_suffix(".pub").read_bytes())
    command_log = directory / "commands.log"
    command_log.touch()
    force = directory / "force-command"
    force.write_text(FORCE_COMMAND.replace("LOGFILE", shlex.quote(str(command_log))))
    force.chmod(0o755)
    log = directory / "sshd.log"
    user = getpass.getuser()
    last_error = ""
    for _attempt in range(3):
        port = _free_port()
        config = directory / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {directory / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AcceptEnv ONE_TEST_HOST",
            f"ForceCommand {force}",
            # oned runs up to 15 actions at once, each may open several connections
            "MaxStartups 200",
            "MaxSessions 100",
            "LogLevel VERBOSE",
            "",
        ]))
        check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            pytest.fail(f"sshd rejects its test configuration: {check.stderr.strip()}", pytrace=False)
        proc = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(log)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            time.sleep(0.05)
        if proc.poll() is None:
            break
        last_error = _tail(log)
    else:
        pytest.fail(f"sshd did not start (3 tries); its log:\n{last_error}", pytrace=False)
    ssh_config = directory / "ssh_config"
    blocks = []
    for host in hosts:
        blocks.append("\n".join([
            f"Host {host}",
            "    HostName 127.0.0.1",
            f"    Port {port}",
            f"    User {user}",
            f"    IdentityFile {identity}",
            "    IdentitiesOnly yes",
            "    StrictHostKeyChecking no",
            "    UserKnownHostsFile /dev/null",
            "    GlobalKnownHostsFile /dev/null",
            "    LogLevel ERROR",
            "    BatchMode yes",
            "    ConnectTimeout 10",
            f"    SetEnv ONE_TEST_HOST={host}",
            "",
        ]))
    ssh_config.write_text("\n".join(blocks))
    server = Sshd(dir=directory, port=port, config=config, ssh_config=ssh_config, identity=identity, log=log,
                  command_log=command_log, proc=proc)
    try:
        probe = server.run(hosts[0], "true", timeout=30)
        if probe.returncode != 0:
            pytest.fail(f"ssh to the test sshd fails: {probe.stderr.decode(errors='replace').strip()}\n"
                        f"sshd log:\n{_tail(log)}", pytrace=False)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real OpenSSH server for the test hosts node1, node2 and one-fe (see the module doc)."""
    with sshd_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


# ----------------------------------------------------------------------------------------------
# the cloud


@dataclass
class TestHost:
    name: str
    host_id: int | None       # OpenNebula host id (None: the front-end, no HOST object)
    client: int               # StorPool client id (SP_OURID)
    device_dir: Path          # where the simulator links this client's attachments
    ds_location: str          # DATASTORE_LOCATION as oned writes it (with its double slash)


@dataclass
class Cloud:
    """Everything one storage test needs; build it with ``build_cloud`` or the ``cloud`` fixture.

    Attributes: ``root`` (tmp dir), ``sim`` (StorPoolSim), ``oned`` (OnedDouble), ``sshd``,
    ``hosts`` (name -> TestHost), ``conf`` (driver config file), ``storpool_conf``,
    ``ssh_config``, ``auth_file``, ``home`` (also the cwd of driver processes, like
    /var/lib/one), ``env`` (environment of driver processes).
    """

    root: Path
    sim: StorPoolSim
    oned: OnedDouble
    sshd: Sshd
    hosts: dict[str, TestHost]
    conf: Path
    storpool_conf: Path
    auth_file: Path
    home: Path
    env: dict[str, str]
    settings: dict[str, str] = field(default_factory=dict)
    ssh_log_start: int = 0

    # -- layout ---------------------------------------------------------------------------------

    @property
    def ssh_config(self) -> Path:
        return self.sshd.ssh_config

    def device_dir(self, host: str) -> Path:
        return self.hosts[host].device_dir

    def ds_location(self, host: str) -> Path:
        return Path(os.path.normpath(self.hosts[host].ds_location))

    def vm_dir(self, host: str, vm_id: int, ds_id: int = SYSTEM_DS) -> Path:
        return self.ds_location(host) / str(ds_id) / str(vm_id)

    def disk_path(self, host: str, vm_id: int, disk_id: int, ds_id: int = SYSTEM_DS) -> Path:
        return self.vm_dir(host, vm_id, ds_id) / f"disk.{disk_id}"

    def tm_path(self, host: str, vm_id: int, disk_id: int | None = None, ds_id: int = SYSTEM_DS) -> str:
        """The ``host:path`` argument oned puts on a transfer line, e.g.
        ``node1:<root>/node1//datastores/101/42/disk.0`` (no disk_id: the VM directory)."""
        path = f"{self.hosts[host].ds_location}/{ds_id}/{vm_id}"
        return f"{host}:{path}" + (f"/disk.{disk_id}" if disk_id is not None else "")

    def link(self, host: str, vm_id: int, disk_id: int, ds_id: int = SYSTEM_DS) -> str | None:
        """Where ``disk.N`` of the VM points on ``host`` (None: no symlink there)."""
        path = self.disk_path(host, vm_id, disk_id, ds_id)
        try:
            return os.readlink(path)
        except OSError:
            return None

    # -- configuration --------------------------------------------------------------------------

    def configure(self, **values: str | int | None) -> None:
        """Set (None: remove) driver configuration values and rewrite the file."""
        for key, value in values.items():
            if value is None:
                self.settings.pop(key, None)
            else:
                self.settings[key] = str(value)
        _write_conf(self.conf, self.settings)

    # -- oned documents -------------------------------------------------------------------------

    def make_image(self, image_id: int, *, size_mb: int = 64, persistent: bool = False, image_type: str | None = None,
                   name: str | None = None, ds_id: int = IMAGE_DS, state: int = oned_sim.IMAGE_READY,
                   source: str | None = None, fmt: str = "raw",
                   template: Mapping[str, object] | None = None) -> etree._Element:
        """Register an IMAGE (SOURCE ``one-img-<id>``) in the oned double (no volume is made)."""
        kind = image_type or ("DATABLOCK" if persistent else "OS")
        doc = oned_sim.image_document(
            image_id, name=name or f"image-{image_id}", source=f"one-img-{image_id}" if source is None else source,
            size_mb=size_mb, ds_id=ds_id, ds_name=oned_sim._text(self.oned.datastore(ds_id), "NAME"),
            persistent=persistent, image_type=kind, fmt=fmt, state=state, template=template)
        return self.oned.add_image(doc)

    def make_vm(self, vm_id: int = 42, disks: Sequence[Mapping[str, Any]] | None = None, host: str = "node1",
                user: Mapping[str, object] | None = None, *, context: bool = True,
                template: Mapping[str, object] | None = None, state: int = oned_sim.VM_ACTIVE,
                lcm_state: int = oned_sim.LCM_RUNNING, name: str | None = None,
                system_ds: int = SYSTEM_DS) -> etree._Element:
        """Register a VM like vm-42.xml with TM_MAD storpool on ``host``; returns its element.

        ``disks`` (DISK_ID = position unless given), each a dict:
          ``{"image": 7, "size": 64}``             non-persistent image (CLONE=YES, SOURCE one-img-7)
          ``{"image": 8, "persistent": True}``     persistent image (CLONE=NO, PERSISTENT=YES)
          ``{"image": 9, "cdrom": True}``          CD-ROM image (TYPE=CDROM, READONLY=YES)
          ``{"volatile": "fs", "size": 32, "fs": "ext4"}`` / ``{"volatile": "swap", "size": 16}``
        "size" is in MB (an image's default: its registered SIZE, else 64); UPPER-CASE keys are
        DISK attributes set as given (None removes one). Images not registered yet are added.
        Default disks: vm-42.xml's kinds (image 7, persistent image 8, volatile fs).
        The CONTEXT CD-ROM gets the next DISK_ID (``context=False``: none).
        """
        specs: list[Mapping[str, Any]] = list(disks) if disks is not None else [
            {"image": 7, "size": 64}, {"image": 8, "persistent": True, "size": 64},
            {"volatile": "fs", "size": 32, "fs": "ext4"}]
        letters: dict[str, int] = {}

        def target(prefix: str) -> str:
            n = letters.get(prefix, 0)
            letters[prefix] = n + 1
            return prefix + "abcdefghijklmnopqrstuvwxyz"[n]

        image_ds_name = oned_sim._text(self.oned.datastore(IMAGE_DS), "NAME")
        system_ds_name = oned_sim._text(self.oned.datastore(system_ds), "NAME")
        out: list[dict[str, object]] = []
        for position, spec in enumerate(specs):
            disk_id = int(spec.get("DISK_ID", position))
            attrs: dict[str, object] = {"ALLOW_ORPHANS": "YES", "CLUSTER_ID": 0, "DISK_ID": disk_id,
                                        "DISK_TYPE": "BLOCK", "DRIVER": "raw", "TM_MAD": "storpool"}
            if "volatile" in spec:
                kind = str(spec["volatile"]).lower()
                if kind not in ("fs", "swap"):
                    raise ValueError(f"volatile disk kind {kind!r}: fs or swap")
                attrs.update(DATASTORE=system_ds_name, DATASTORE_ID=system_ds, DEV_PREFIX="vd",
                             SIZE=int(spec.get("size", 32)), TARGET=target("vd"), TYPE=kind)
                if kind == "fs":
                    attrs.update(FORMAT="raw", FS=spec.get("fs", "ext4") or None)
            elif "image" in spec:
                image_id = int(spec["image"])
                persistent = bool(spec.get("persistent", False))
                cdrom = bool(spec.get("cdrom", False))
                if image_id not in self.oned.images:
                    self.make_image(image_id, size_mb=int(spec.get("size", 64)), persistent=persistent,
                                    image_type="CDROM" if cdrom else None)
                image = self.oned.image(image_id)
                image_size = int(oned_sim._text(image, "SIZE", "0") or 0) or 64
                prefix = "hd" if cdrom else "vd"
                attrs.update(
                    CLONE="NO" if persistent else "YES", CLONE_TARGET="SELF", DATASTORE=image_ds_name,
                    DATASTORE_ID=int(oned_sim._text(image, "DATASTORE_ID", str(IMAGE_DS))), DEV_PREFIX=prefix,
                    DISK_SNAPSHOT_TOTAL_SIZE=0, FORMAT=oned_sim._text(image, "FORMAT") or "raw",
                    IMAGE=oned_sim._text(image, "NAME"), IMAGE_ID=image_id,
                    IMAGE_STATE=8 if persistent else 2, IMAGE_UNAME="oneadmin", LN_TARGET="NONE",
                    ORIGINAL_SIZE=image_size, READONLY="YES" if cdrom else "NO", SAVE="YES" if persistent else "NO",
                    SIZE=int(spec.get("size", image_size)), SOURCE=oned_sim._text(image, "SOURCE"),
                    TARGET=target(prefix), TYPE="CDROM" if cdrom else "BLOCK")
                if persistent:
                    attrs["PERSISTENT"] = "YES"
            else:
                raise ValueError(f"disk spec {spec!r}: needs 'image' or 'volatile'")
            for key, value in spec.items():
                if key.isupper():
                    attrs[key] = value
            out.append({k: v for k, v in attrs.items() if v is not None})
        ctx = None
        if context:
            used = [int(str(d["DISK_ID"])) for d in out]
            ctx = {"DISK_ID": max(used, default=-1) + 1, "TARGET": target("hd")}
        hid = self.hosts[host].host_id
        doc = oned_sim.vm_document(
            vm_id, disks=out, context=ctx, host=host, host_id=hid if hid is not None else -1, system_ds=system_ds,
            tm_mad="storpool", name=name, state=state, lcm_state=lcm_state, user=user, template=template)
        return self.oned.add_vm(doc)

    def ds_message(self, image: int | etree._Element | None, ds_id: int = IMAGE_DS,
                   extra: Mapping[str, object] | Sequence[etree._Element] | None = None) -> etree._Element:
        """A ``<DS_DRIVER_ACTION_DATA>`` as oned formats it: IMAGE (an id of the double's, or an
        element), the DATASTORE document, then ``extra`` root elements (e.g. DATASTORE_LOCATION)."""
        root = etree.Element("DS_DRIVER_ACTION_DATA")
        if image is not None:
            root.append(copy.deepcopy(image) if isinstance(image, etree._Element) else self.oned.served("image", image))
        root.append(self.oned.served("datastore", ds_id))
        if isinstance(extra, Mapping):
            for key, value in extra.items():
                etree.SubElement(root, key).text = str(value)
        elif extra is not None:
            for el in extra:
                root.append(el)
        return root

    # -- StorPool -------------------------------------------------------------------------------

    def sp(self, call: str, body: Any = None) -> Any:
        """One StorPool API call to the simulator (``call`` may carry its path argument, e.g.
        ``VolumeDescribe/one-img-7``); returns ``data``; an error reply raises RuntimeError."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.sim.url}/ctrl/1.0/{call}", data=data,
                                     method="POST" if body is not None else "GET",
                                     headers={"Authorization": f"Storpool v1:{self.sim.token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as reply:
                return json.loads(reply.read())["data"]
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"StorPool {call}: {err.read().decode(errors='replace')}") from None

    def attach(self, name: str, host: str, *, rw: bool = True, snapshot: bool = False) -> Path:
        """Attach a volume (snapshot) to ``host``'s client; returns its link in that device dir."""
        key = "snapshot" if snapshot else "volume"
        entry: dict[str, Any] = {key: name, ("rw" if rw and not snapshot else "ro"): [self.hosts[host].client]}
        self.sp("VolumesReassign", [entry])
        return self.device_dir(host) / name

    def detach(self, name: str, host: str, *, snapshot: bool = False) -> None:
        """Detach the test's own attachment. The simulator calls a device "open" when ANY
        process on the machine holds it (a just-closed writer, another test session's probe),
        so a short "busy" is waited out rather than forced."""
        key = "snapshot" if snapshot else "volume"
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sp("VolumesReassign", [{key: name, "detach": [self.hosts[host].client]}])
                return
            except RuntimeError as exc:
                if '"busy"' not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def make_volume(self, name: str, size_mb: int = 64, *, data: bytes = b"", template: str = "one-ds-100",
                    tags: Mapping[str, str] | None = None) -> None:
        """Create a volume in the simulator and write ``data`` at its start through an attachment
        on the front-end (detached again)."""
        body: dict[str, Any] = {"name": name, "size": size_mb * MiB, "template": template}
        if tags:
            body["tags"] = dict(tags)
        self.sp("VolumeCreate", body)
        if data:
            link = self.attach(name, FRONTEND)
            try:
                with open(link, "r+b") as dev:
                    dev.write(data)
                    dev.flush()
                    os.fsync(dev.fileno())
            finally:
                self.detach(name, FRONTEND)

    @staticmethod
    def sha256(path: str | os.PathLike[str], length: int) -> str:
        """Checksum of the first ``length`` bytes of a file or block device (e.g. a disk link)."""
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            remaining = length
            while remaining > 0:
                chunk = fh.read(min(remaining, MiB))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
        return digest.hexdigest()

    # -- running drivers ------------------------------------------------------------------------

    def run_tm(self, action: str, *args: str, stdin: bytes = b"", timeout: float = 120,
               remotes: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        """``tm/storpool/<action> ARGS`` as one_tm runs it (stdin as the action gets it)."""
        return self._run((remotes or drivers.REMOTES) / "tm" / "storpool" / action, list(args), stdin, timeout)

    def run_ds(self, action: str, payload: bytes | etree._Element, obj_id: int | str, *, form: str = "6.8",
               b64: bool = True, timeout: float = 120,
               remotes: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        """``datastore/storpool/<action>`` as oned's DS driver calls it in OpenNebula ``form``:
        "6.8" (6.8+, 7.x): argv ``<id>``, base64 on stdin without newline; "6.6.3": argv
        ``- <id>``, base64 on stdin; "6.6" (<= 6.6.1): argv ``<base64> <id>``. ``payload`` is the
        XML (element or bytes), base64-encoded here unless ``b64=False`` (sent as given)."""
        raw = etree.tostring(payload) if isinstance(payload, etree._Element) else payload
        encoded = base64.b64encode(raw) if b64 else raw
        if form == "6.8":
            argv, stdin = [str(obj_id)], encoded
        elif form == "6.6.3":
            argv, stdin = ["-", str(obj_id)], encoded
        elif form == "6.6":
            argv, stdin = [encoded.decode(errors="surrogateescape"), str(obj_id)], b""
        else:
            raise ValueError(f"form {form!r}: one of {DS_FORMS}")
        return self._run((remotes or drivers.REMOTES) / "datastore" / "storpool" / action, argv, stdin, timeout)

    def _run(self, path: Path, argv: list[str], stdin: bytes, timeout: float) -> subprocess.CompletedProcess[bytes]:
        if not path.is_file():
            pytest.fail(f"driver executable {path} does not exist", pytrace=False)
        return subprocess.run([sys.executable, str(path), *argv], input=stdin, capture_output=True, env=self.env,
                              cwd=self.home, timeout=timeout, check=False)

    # -- hosts ----------------------------------------------------------------------------------

    def ssh(self, host: str, *argv: str, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` on a test host through the real ssh hop (arguments arrive literally)."""
        return self.sshd.run(host, *argv, input=input, timeout=timeout)

    def ssh_commands(self) -> list[tuple[str, str]]:
        """(host, command line) of every command run over ssh since this cloud was built."""
        return self.sshd.commands(self.ssh_log_start)

    def libvirt_calls(self, api: str = "") -> list[str]:
        """The libvirt API calls driver processes made (libvirt's own client-side debug log),
        e.g. ``virDomainSave:923 : dom=0x..., (VM: name=one-7, uuid=...), to=/path``; only
        those of ``api`` (``virDomainSave``) when given."""
        path = self.root / LIBVIRT_CLIENT_LOG
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        calls = [line.split(": debug : ", 1)[1] for line in lines if ": debug : " in line]
        return [c for c in calls if not api or c.startswith(api + ":")]

    def libvirt_tunnels(self) -> list[str]:
        """ssh commands that carried a libvirt connection (libvirt-python's ``qemu+ssh://``
        runs virt-ssh-helper on the host) or a virsh, since this cloud was built."""
        return [cmd for _, cmd in self.ssh_commands() if "virt-ssh-helper" in cmd or "virsh" in cmd]


def libvirt_log_env(root: Path) -> dict[str, str]:
    """Environment that makes libvirt's client library (in the driver processes) log every
    API call into ``root``/libvirt-client.log (``Cloud.libvirt_calls``)."""
    return {"LIBVIRT_LOG_OUTPUTS": f"1:file:{root / LIBVIRT_CLIENT_LOG}",
            "LIBVIRT_LOG_FILTERS": "1:libvirt.domain 1:libvirt.host"}


def _write_conf(path: Path, values: Mapping[str, str]) -> None:
    lines = ["# one-tweaks storage drivers: test configuration written by tests/storage_env.py"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def _our_loops(root: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if str(root) in line]


@contextlib.contextmanager
def build_cloud(root: Path, server: Sshd) -> Iterator[Cloud]:
    """Start the simulator and the oned double, write the configuration; stop both on exit."""
    root.mkdir(parents=True, exist_ok=True)
    hosts: dict[str, TestHost] = {}
    for client, (name, host_id) in enumerate((("node1", 1), ("node2", 2), (FRONTEND, None)), 1):
        device_dir = root / name / "dev" / "storpool"
        device_dir.mkdir(parents=True)
        (root / name / "datastores").mkdir()
        hosts[name] = TestHost(name=name, host_id=host_id, client=client, device_dir=device_dir,
                               ds_location=f"{root}/{name}//datastores")
    sim = StorPoolSim(root / "sp", token=SP_TOKEN, auto_clients=False)
    oned = OnedDouble(auth=ONE_AUTH)
    try:
        sim.start()
        for host in hosts.values():
            sim.add_client(host.client, host.device_dir, hostname=host.name)
        oned.start()
        fe = hosts[FRONTEND]
        for ds_id in (IMAGE_DS, SYSTEM_DS):
            req = urllib.request.Request(
                f"{sim.url}/ctrl/1.0/VolumeTemplateCreate", method="POST",
                data=json.dumps({"name": f"one-ds-{ds_id}", "replication": 3, "placeAll": "default"}).encode(),
                headers={"Authorization": f"Storpool v1:{sim.token}"})
            with urllib.request.urlopen(req, timeout=30):
                pass
        oned.add_datastore(oned_sim.datastore_document(
            IMAGE_DS, IMAGE_DS_NAME, ds_type="IMAGE_DS", ds_mad="storpool", tm_mad="storpool", disk_type="BLOCK",
            base_path=f"{fe.ds_location}/{IMAGE_DS}", attrs={"BRIDGE_LIST": "node1"}))
        oned.add_datastore(oned_sim.datastore_document(
            SYSTEM_DS, SYSTEM_DS_NAME, ds_type="SYSTEM_DS", ds_mad="-", tm_mad="storpool", disk_type="BLOCK",
            base_path=f"{fe.ds_location}/{SYSTEM_DS}", attrs={"BRIDGE_LIST": "node1 node2"}))
        for host in hosts.values():
            if host.host_id is not None:
                oned.add_host(host.name, host.host_id, {
                    "SP_OURID": host.client, "SP_DEVICE_DIR": str(host.device_dir),
                    "DATASTORE_LOCATION": host.ds_location})
        # StorPool's own file: global API settings, then one section per host name
        storpool_conf = root / "storpool.conf"
        storpool_conf.write_text("\n".join([
            "# /etc/storpool.conf of the test cluster (the StorPool API simulator)",
            "SP_CLUSTER_NAME=one-tweaks-test",
            "SP_API_HTTP_HOST=127.0.0.1",
            f"SP_API_HTTP_PORT={sim.port}",
            f"SP_AUTH_TOKEN={SP_TOKEN}",
            "",
            f"[{FRONTEND}]",
            f"SP_OURID={fe.client}",
            "",
            f"# this machine is the front-end: tools that look up their own hostname ({socket.gethostname()})",
            f"[{socket.gethostname()}]",
            f"SP_OURID={fe.client}",
            "",
        ]))
        home = root / "var" / "lib" / "one"
        home.mkdir(parents=True)
        auth_file = root / "one_auth"
        auth_file.write_text(ONE_AUTH + "\n")
        auth_file.chmod(0o600)
        conf = root / "one-tweaks.conf"
        settings = {
            "SP_API_HTTP_HOST": "127.0.0.1",
            "SP_API_HTTP_PORT": str(sim.port),
            "SP_AUTH_TOKEN": SP_TOKEN,
            "SSH_COMMAND": shlex.join(server.ssh_command),
            "LOCK_DIR": str(root / "locks"),
            "SP_DEVICE_DIR": str(fe.device_dir),
            "SP_STORPOOL_CONF": str(storpool_conf),
            "STAGING_DIR": str(root / "staging"),
            "DELAY_DELETE": "48h",
        }
        (root / "staging").mkdir()
        _write_conf(conf, settings)
        path = os.environ.get("PATH", "/usr/bin:/bin")
        for extra in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
            if extra not in path.split(":"):
                path += ":" + extra
        env = {"PATH": path, "HOME": str(home), "LANG": os.environ.get("LANG", "C.UTF-8"),
               "ONE_XMLRPC": oned.url, "ONE_AUTH": str(auth_file), "ONE_TWEAKS_CONF": str(conf),
               "PYTHONDONTWRITEBYTECODE": "1", **libvirt_log_env(root)}
        for key in ("TMPDIR", "ONE_TWEAKS_RULES_DIR", "ONE_TWEAKS_CACHE_DIR"):
            if key in os.environ:
                env[key] = os.environ[key]
        yield Cloud(root=root, sim=sim, oned=oned, sshd=server, hosts=hosts, conf=conf, storpool_conf=storpool_conf,
                    auth_file=auth_file, home=home, env=env, settings=settings, ssh_log_start=server.log_offset())
    finally:
        oned.stop()
        sim.stop()
        deadline = time.monotonic() + LOOP_WAIT
        while _our_loops(root) and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture
def cloud(tmp_path: Path, sshd: Sshd) -> Iterator[Cloud]:
    """A fresh simulated cloud for one test (see ``Cloud`` and the module docstring)."""
    with build_cloud(tmp_path / "cloud", sshd) as built:
        yield built
    leaked = _our_loops(tmp_path / "cloud")
    assert not leaked, f"loop devices left attached: {leaked}"
