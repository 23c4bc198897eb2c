"""libvirt on an OpenNebula host, reached from the front-end: the only way this project's
code talks to a host's libvirt (VMM overrides, TM pre-flight, ``drift``, ``preflight``).

Two channels, each for what it is good at:

- **libvirt-python** (``Hypervisor``, ``Domain``) for every live domain operation: state,
  XML, attach/detach/update of devices, block resize, fsfreeze, save/restore, create,
  destroy, migration, capabilities. The connection goes to ``libvirt_uri(config, host)``:

  * ``HOST_LIBVIRT_URI`` (configuration; ``{host}`` is replaced by the host's name) when set;
  * else ``LIBVIRT_URI`` (kvmrc's, default ``qemu:///system``) itself when it names a host
    (``qemu+tls://{host}/system``) or the host is this machine (``localhost``);
  * else that URI tunnelled through ssh, built from the same settings the ssh commands use
    (``ssh -G`` with SSH_COMMAND's options: user, host name, port, identity file; a host
    key check turned off there is turned off here): ``qemu+ssh://[user@]HOST[:port]/system
    ?keyfile=...&no_tty=1[&no_verify=1]``, LIBVIRT_URI's own query (``socket=``) kept.

  libvirt's errors become one-line ``DriverError`` s by their error code (``failure``):
  no such domain is ``NotFound``, a connection or agent that does not answer is
  ``Transient``, the rest name the host, the operation and libvirt's own reason.
- **ssh** (``shell``) for what is no libvirt call: OpenNebula's stock remote scripts
  (``forward``), reading the head of a file (``Hypervisor.head``), file copies.

libvirt itself is imported on the first connection, never at import time: the deploy
path (``deploy-tweaks``) shares this module's settings but must not load the binding.

Configuration (``/etc/one/one-tweaks.conf``):
    LIBVIRT_URI      libvirt on the hosts, as a process on the host sees it (default
                     ``qemu:///system``)
    HOST_LIBVIRT_URI libvirt on a host as the front-end reaches it (default: see above)
    MIGRATE_URI      the destination as the source host sees it, for ``--p2p`` migrations
                     (default ``qemu+ssh://{host}/system``)
    MIGRATE_OPTIONS  ``virsh migrate`` options (kvmrc's), mapped to libvirt's flags/parameters
    HOST_TIMEOUT     seconds an ssh command may take (default 600; 3600 for long ones)
    DATASTORE_LOCATION, SCRIPTS_REMOTE_DIR, SSH_COMMAND  as OpenNebula's
"""

from __future__ import annotations

import contextlib
import copy
import posixpath
import re
import shlex
import subprocess
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from lxml import etree

from . import log, numbers, xmldoc
from .config import Config
from .errors import Conflict, DriverError, NotFound, Transient
from .hostcmd import LOCAL_NAMES, Host
from .oned import Oned
from .paths import check_host, clean_path

if TYPE_CHECKING:
    import libvirt

DEFAULT_LIBVIRT_URI = "qemu:///system"
DEFAULT_MIGRATE_URI = "qemu+ssh://{host}/system"
DEFAULT_DS_LOCATION = "/var/lib/one//datastores"
DEFAULT_REMOTE_DIR = "/var/tmp/one"
HOST_TIMEOUT = 600.0
LONG_TIMEOUT = 3600.0
ONE_NS = "http://opennebula.org/xmlns/libvirt/1.0"
# virsh's names for libvirt's domain states (what logs and messages have always shown)
STATES = ("no state", "running", "idle", "paused", "in shutdown", "shut off", "crashed", "pmsuspended")
LIVE_STATES = ("running", "paused", "idle", "in shutdown", "pmsuspended")

_DEPLOY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# a libvirt URI: scheme://[host][/path][?query]; no blanks, quotes or shell characters
_URI = re.compile(r"[a-z][a-z0-9+.-]*://[A-Za-z0-9_.:@\[\]-]*(/[A-Za-z0-9_./+=@,:%-]*)?(\?[A-Za-z0-9_./+=@,:%&-]*)?")
_OPTION = re.compile(r"[A-Za-z0-9_=:,./+@%-]+")
_SAFE_PATH = re.compile(r"[A-Za-z0-9_.+=@,/-]+")
_DEFAULT_KEYS = re.compile(r"~/\.ssh/id_[a-z0-9_]+")

T = TypeVar("T")


# --- arguments ---------------------------------------------------------------------------------

def deploy_id(raw: str) -> str:
    """A libvirt domain name or UUID as oned passes it (``one-42`` in 5.x, a UUID since 6.0)."""
    if not _DEPLOY_ID.fullmatch(raw):
        raise DriverError(f"deploy id {raw!r} is not a libvirt domain name or UUID")
    return raw


def is_uuid(raw: str) -> bool:
    return bool(_UUID.fullmatch(raw))


def vm_id(raw: str) -> int:
    return numbers.object_id(raw, "VM id")


def uri(template: str, host: str, what: str) -> str:
    """``template`` with ``{host}`` replaced, checked to be a plain libvirt URI."""
    value = template.strip().replace("{host}", check_host(host))
    if not _URI.fullmatch(value):
        raise DriverError(f"configuration {what}={template!r} is not a libvirt URI")
    return value


def options(raw: str, what: str) -> list[str]:
    """Extra command-line options from the configuration (e.g. MIGRATE_OPTIONS)."""
    try:
        words = shlex.split(raw)
    except ValueError as exc:
        raise DriverError(f"configuration {what}: {exc}") from None
    for word in words:
        if not _OPTION.fullmatch(word):
            raise DriverError(f"configuration {what}: {word!r} is not an option virsh takes")
    return words


# --- ssh: stock scripts and files ----------------------------------------------------------------

def ssh_command(config: Config) -> list[str]:
    return config.ssh_command()


def host_timeout(config: Config) -> float:
    return float(config.integer("HOST_TIMEOUT") or HOST_TIMEOUT)


def long_timeout(config: Config) -> float:
    """save, restore and migrate move the guest's memory: an hour unless HOST_TIMEOUT is set."""
    return float(config.integer("HOST_TIMEOUT") or LONG_TIMEOUT)


def shell(config: Config, host: str) -> Host:
    """Commands on ``host`` over ssh (SSH_COMMAND), each argument quoted."""
    return Host(check_host(host), ssh=ssh_command(config), timeout=host_timeout(config))


def ds_location(oned: Oned, host: str, config: Config) -> str:
    """DATASTORE_LOCATION on ``host``: the host's own attribute, the configuration,
    OpenNebula's default."""
    doc = oned.host_by_name(host)
    location = xmldoc.text(doc, "TEMPLATE/DATASTORE_LOCATION") if doc is not None else ""
    return location or config.get("DATASTORE_LOCATION") or DEFAULT_DS_LOCATION


def vm_dir(oned: Oned, host: str, config: Config, ds_id: int, vm: int) -> str:
    """The VM's directory on ``host`` (``<DATASTORE_LOCATION>/<ds_id>/<vm_id>``), normalised."""
    path = clean_path(f"{ds_location(oned, host, config)}/{ds_id}/{vm}", "VM directory")
    if not _SAFE_PATH.fullmatch(path):
        raise DriverError(f"VM directory {path!r} contains characters a datastore path never has")
    return path


def remote_script(config: Config, *parts: str) -> str:
    """``<SCRIPTS_REMOTE_DIR>/<parts...>`` (OpenNebula's remote scripts on the hosts)."""
    remote_dir = config.get("SCRIPTS_REMOTE_DIR") or DEFAULT_REMOTE_DIR
    path = clean_path(posixpath.join(remote_dir, *parts), "SCRIPTS_REMOTE_DIR")
    if not _SAFE_PATH.fullmatch(path):
        raise DriverError(f"configuration SCRIPTS_REMOTE_DIR={remote_dir!r} is not a plain path")
    return path


def forward(config: Config, host: str, script: str, args: Sequence[str], stdin: bytes, *,
            mad: str = "kvm", long: bool = False) -> str:
    """Run OpenNebula's own remote ``vmm/<mad>/<script>`` on the host with the same argv and
    the plain (decoded) driver message on stdin, for what the overrides leave to it."""
    path = remote_script(config, "vmm", mad, script)
    proc = shell(config, host).run([path, *args], input=stdin, check=False,
                                   timeout=long_timeout(config) if long else None)
    if proc.returncode != 0:
        raise DriverError(f"{host}: {path} failed: {last_line(proc.stderr)}")
    return proc.stdout.decode(errors="replace")


def last_line(data: bytes | str) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1].removeprefix("error: ")[:300] if lines else "no error output"


# --- the libvirt URI -----------------------------------------------------------------------------

_SSH_SETTINGS: dict[tuple[str, ...], dict[str, list[str]]] = {}


def ssh_settings(config: Config, host: str) -> dict[str, list[str]]:
    """What ssh would use to reach ``host`` (``ssh -G``: no connection is made)."""
    argv = [*ssh_command(config), "-G", check_host(host)]
    key = tuple(argv)
    if key not in _SSH_SETTINGS:
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DriverError(f"cannot read the ssh settings for {host} ({argv[0]} -G): {exc}") from None
        if proc.returncode != 0:
            raise DriverError(f"cannot read the ssh settings for {host} ({argv[0]} -G): {last_line(proc.stderr)}")
        found: dict[str, list[str]] = {}
        for line in proc.stdout.decode(errors="replace").splitlines():
            name, _, value = line.strip().partition(" ")
            if name:
                found.setdefault(name.lower(), []).append(value.strip())
        _SSH_SETTINGS[key] = found
    return _SSH_SETTINGS[key]


def _is_local(host: str) -> bool:
    return host in LOCAL_NAMES


def libvirt_uri(config: Config, host: str) -> str:
    """The URI the front-end opens to reach libvirt on ``host`` (see the module doc)."""
    explicit = config.get("HOST_LIBVIRT_URI")
    if explicit:
        return uri(explicit, host, "HOST_LIBVIRT_URI")
    base = uri(config.get("LIBVIRT_URI") or DEFAULT_LIBVIRT_URI, host, "LIBVIRT_URI")
    parts = urllib.parse.urlsplit(base)
    if parts.netloc or _is_local(host):
        return base
    return ssh_uri(config, host, parts)


def ssh_uri(config: Config, host: str, base: urllib.parse.SplitResult) -> str:
    """``base`` (a local URI such as ``qemu:///system``) tunnelled through ssh to ``host``."""
    settings = ssh_settings(config, host)

    def one(name: str) -> str:
        values = settings.get(name) or [""]
        return values[0]

    hostname = one("hostname") or host
    netloc = hostname if ":" not in hostname else f"[{hostname}]"
    user = one("user")
    if user:
        netloc = f"{urllib.parse.quote(user, safe='')}@{netloc}"
    port = one("port")
    if port and port != "22":
        netloc += f":{port}"
    query = urllib.parse.parse_qsl(base.query, keep_blank_values=True)
    keys = [k for k in settings.get("identityfile", []) if not _DEFAULT_KEYS.fullmatch(k)]
    if keys:
        query.append(("keyfile", keys[0]))
    query.append(("no_tty", "1"))
    if one("stricthostkeychecking").lower() in ("false", "no", "off"):
        query.append(("no_verify", "1"))
    scheme = base.scheme.split("+")[0] + "+ssh"
    return urllib.parse.urlunsplit((scheme, netloc, base.path or "/system",
                                    urllib.parse.urlencode(query, safe="/"), ""))


# --- libvirt's errors ----------------------------------------------------------------------------

_BINDING: Any = None
_LOCK = threading.Lock()


def binding() -> Any:
    """The libvirt module, imported on first use; its own stderr printer silenced (every
    error reaches the operator as one line through ``failure``)."""
    global _BINDING
    with _LOCK:
        if _BINDING is None:
            try:
                import libvirt
            except ImportError:
                raise DriverError("libvirt-python is not installed (pip install libvirt-python)") from None
            libvirt.registerErrorHandler(lambda *_: None, None)
            _BINDING = libvirt
    return _BINDING


# error code names -> (exception class, what the reason is about); anything else: DriverError
_TRANSIENT = ("VIR_ERR_NO_CONNECT", "VIR_ERR_RPC", "VIR_ERR_OPERATION_TIMEOUT", "VIR_ERR_AGENT_UNRESPONSIVE",
              "VIR_ERR_AGENT_UNSYNCED", "VIR_ERR_AUTH_FAILED", "VIR_ERR_AUTH_UNAVAILABLE", "VIR_ERR_NO_SUPPORT")
_NOT_FOUND = ("VIR_ERR_NO_DOMAIN", "VIR_ERR_NO_DOMAIN_SNAPSHOT", "VIR_ERR_NO_NWFILTER", "VIR_ERR_NO_STORAGE_VOL",
              "VIR_ERR_NO_SECRET", "VIR_ERR_NO_NETWORK")
_CONFLICT = ("VIR_ERR_DOM_EXIST",)


def error_code(exc: BaseException) -> int | None:
    getter = getattr(exc, "get_error_code", None)
    return getter() if callable(getter) else None


def code_name(code: int | None) -> str:
    if code is None:
        return ""
    lv = binding()
    for name in dir(lv):
        if name.startswith("VIR_ERR_") and getattr(lv, name) == code and name not in ("VIR_ERR_OK",):
            return name
    return ""


def failure(exc: BaseException, where: str) -> DriverError:
    """libvirt's error ``exc`` as a one-line driver error ``<where>: <libvirt's reason>``,
    of the class its error code calls for."""
    getter = getattr(exc, "get_error_message", None)
    message = (getter() if callable(getter) else "") or str(exc) or type(exc).__name__
    name = code_name(error_code(exc))
    cls: type[DriverError] = DriverError
    if name in _NOT_FOUND:
        cls = NotFound
    elif name in _TRANSIENT:
        cls = Transient
    elif name in _CONFLICT:
        cls = Conflict
    elif name == "VIR_ERR_SYSTEM_ERROR" and ("Cannot recv data" in message or "End of file" in message):
        cls = Transient  # the ssh tunnel or the daemon went away
    return cls(f"{where}: {message}")


# --- libvirt on one host -------------------------------------------------------------------------

class Hypervisor:
    """libvirt on one host, through libvirt-python (connection opened on first use)."""

    def __init__(self, config: Config, host: str) -> None:
        self.config = config
        self.host = check_host(host) if host not in LOCAL_NAMES else host
        self.uri = libvirt_uri(config, host)
        self._conn: libvirt.virConnect | None = None

    def __repr__(self) -> str:
        return f"Hypervisor({self.host!r}, {self.uri!r})"

    @property
    def name(self) -> str:
        return self.host or "localhost"

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            lv = binding()
            try:
                self._conn = lv.open(self.uri)
            except lv.libvirtError as exc:
                error = failure(exc, f"{self.name}: cannot reach libvirt at {self.uri}")
                raise Transient(str(error)) from None
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except binding().libvirtError:
                pass

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with libvirt's error turned into ``<host>: <what>: <reason>``."""
        lv = binding()
        try:
            return fn()
        except lv.libvirtError as exc:
            raise failure(exc, f"{self.name}: {what}") from None

    @property
    def shell(self) -> Host:
        return shell(self.config, self.host)

    # --- domains -------------------------------------------------------------------------------

    def lookup(self, name: str) -> Domain | None:
        """The domain ``name`` (a name or UUID), None when this host has none."""
        lv = binding()
        conn = self.conn
        try:
            dom = conn.lookupByUUIDString(name) if is_uuid(name) else conn.lookupByName(name)
        except lv.libvirtError as exc:
            error = failure(exc, f"{self.name}: domain {name}")
            if isinstance(error, NotFound):
                return None
            raise error from None
        return Domain(self, name, dom)

    def domain(self, name: str) -> Domain:
        """The domain ``name``; ``NotFound`` (one line) when it does not run there."""
        found = self.lookup(name)
        if found is None:
            raise NotFound(f"no domain {name} on {self.name}")
        return found

    def state(self, name: str) -> str | None:
        """``running``, ``paused``, ``shut off``, ... or None when the host has no such domain."""
        found = self.lookup(name)
        return found.state() if found is not None else None

    def dumpxml(self, name: str, *, migratable: bool = False) -> etree._Element:
        return self.domain(name).xml(migratable=migratable)

    def domains(self, *, active: bool = True) -> list[Domain]:
        lv = binding()
        flags = lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE if active else 0
        return [Domain(self, d.name(), d) for d in self.call("list domains", lambda: self.conn.listAllDomains(flags))]

    def create(self, xml: bytes, *, paused: bool = False) -> Domain:
        """Start a transient domain from ``xml`` (``virsh create``)."""
        lv = binding()
        flags = lv.VIR_DOMAIN_START_PAUSED if paused else 0
        dom = self.call("create", lambda: self.conn.createXML(xml.decode(), flags))
        return Domain(self, dom.name(), dom)

    def save_image_xml(self, path: str) -> etree._Element:
        """The domain inside a save image (``virsh save-image-dumpxml``)."""
        text = self.call(f"read the domain in {path}", lambda: self.conn.saveImageGetXMLDesc(path, 0))
        return xmldoc.parse(text.encode(), f"domain in {path}")

    def restore(self, path: str, xml: bytes | None = None) -> None:
        """``virsh restore PATH [--xml]``: the domain from its save image, running."""
        dxml = xml.decode() if xml is not None else None
        self.call(f"restore {path}", lambda: self.conn.restoreFlags(path, dxml, 0))

    # --- the host ------------------------------------------------------------------------------

    def capabilities(self) -> etree._Element:
        text = self.call("capabilities", self.conn.getCapabilities)
        return xmldoc.parse(text.encode(), f"capabilities of {self.name}")

    def domain_capabilities(self, *, emulator: str | None = None, arch: str | None = None,
                            machine: str | None = None, virttype: str | None = None) -> etree._Element:
        text = self.call("domain capabilities",
                         lambda: self.conn.getDomainCapabilities(emulator, arch, machine, virttype, 0))
        return xmldoc.parse(text.encode(), f"domain capabilities of {self.name}")

    def compare_cpu(self, cpu_xml: str, *, emulator: str | None = None, arch: str | None = None,
                    machine: str | None = None, virttype: str | None = None) -> str | None:
        """None when a guest CPU defined by ``cpu_xml`` can run here, else libvirt's reason
        (``compareHypervisorCPU`` with its failure details)."""
        lv = binding()
        flags = lv.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
        try:
            result = self.conn.compareHypervisorCPU(emulator, arch, machine, virttype, cpu_xml, flags)
        except lv.libvirtError as exc:
            if code_name(error_code(exc)) == "VIR_ERR_CPU_INCOMPATIBLE":
                return " ".join(str(exc.get_error_message() or exc).split())
            raise failure(exc, f"{self.name}: compare the CPU") from None
        if result == lv.VIR_CPU_COMPARE_INCOMPATIBLE:
            return "the host CPU is incompatible"
        return None

    def baseline_cpu(self, cpu_xml: str, *, virttype: str | None = None) -> etree._Element:
        """The CPU libvirt would give a guest from ``cpu_xml`` here, its model expanded to
        every feature (``virsh hypervisor-cpu-baseline --features``)."""
        lv = binding()
        flags = lv.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
        text = self.call("CPU baseline",
                         lambda: self.conn.baselineHypervisorCPU(None, None, None, virttype, [cpu_xml], flags))
        return xmldoc.parse(text.encode(), f"CPU baseline of {self.name}")

    def info(self) -> list[Any]:
        """``[model, memory MiB, cpus, mhz, nodes, sockets, cores, threads]``."""
        return list(self.call("node info", self.conn.getInfo))

    def free_memory(self) -> int:
        """Bytes of free memory on the host."""
        return int(self.call("free memory", self.conn.getFreeMemory))

    def free_pages(self, size_kib: int) -> int:
        """Free pages of ``size_kib`` over every NUMA cell (hugepages: 2048, 1048576)."""
        cells = self.info()[4] or 1
        found = self.call(f"free {size_kib} KiB pages", lambda: self.conn.getFreePages([size_kib], 0, cells, 0))
        return sum(int(per.get(size_kib, 0)) for per in found.values())

    def has_secret(self, kind: str, *, uuid: str = "", usage: str = "") -> bool:
        """Whether libvirt here defines the secret (``secretLookupByUUIDString``, or by its
        usage of type ``kind``: ceph, iscsi, volume, tls, vtpm); its value stays unread."""
        lv = binding()
        if uuid:
            def lookup() -> object:
                return self.conn.secretLookupByUUIDString(uuid)
        else:
            usage_type = getattr(lv, f"VIR_SECRET_USAGE_TYPE_{kind.upper()}", None)
            if usage_type is None:
                raise DriverError(f"{self.name}: libvirt secret usage type {kind!r} is unknown")

            def lookup() -> object:
                return self.conn.secretLookupByUsage(usage_type, usage)
        try:
            lookup()
        except lv.libvirtError as exc:
            error = failure(exc, f"{self.name}: secret {uuid or usage}")
            if isinstance(error, NotFound):
                return False
            raise error from None
        return True

    # --- files on the host (ssh) ----------------------------------------------------------------

    def head(self, path: str, size: int) -> bytes:
        """The first ``size`` bytes of a file or device on the host (b"" if it is absent)."""
        proc = self.shell.run(["sh", "-c", 'if [ -e "$1" ]; then exec head -c "$2" -- "$1"; fi', "sh",
                               path, str(size)], check=False)
        return proc.stdout if proc.returncode == 0 else b""


class Domain:
    """One domain on a ``Hypervisor`` (``name`` as oned named it: a name or UUID)."""

    def __init__(self, hv: Hypervisor, name: str, dom: libvirt.virDomain) -> None:
        self.hv = hv
        self.name = name
        self.dom = dom

    def __repr__(self) -> str:
        return f"Domain({self.name!r} on {self.hv.name})"

    @property
    def host(self) -> str:
        return self.hv.name

    def call(self, what: str, fn: Callable[[], T]) -> T:
        return self.hv.call(f"{what} {self.name}", fn)

    @property
    def uuid(self) -> str:
        return str(self.call("uuid", self.dom.UUIDString))

    def state(self) -> str:
        code = self.call("state", self.dom.state)[0]
        return STATES[code] if 0 <= code < len(STATES) else f"state {code}"

    def xml(self, *, migratable: bool = False, inactive: bool = False) -> etree._Element:
        """The live definition (what qemu runs), or the migratable / inactive one."""
        lv = binding()
        flags = (lv.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0) | (lv.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
        text = self.call("dumpxml", lambda: self.dom.XMLDesc(flags))
        return xmldoc.parse(text.encode(), f"domain {self.name} on {self.host}")

    def disks(self) -> Iterator[etree._Element]:
        return self.xml().iterfind("devices/disk")

    def attach(self, xml: bytes) -> None:
        """Hot-plug a device (``virsh attach-device --live``)."""
        lv = binding()
        self.call("attach-device", lambda: self.dom.attachDeviceFlags(xml.decode(), lv.VIR_DOMAIN_AFFECT_LIVE))

    def update(self, xml: bytes) -> None:
        """Change a live device in place (``virsh update-device --live``, e.g. a CD-ROM's medium)."""
        lv = binding()
        self.call("update-device", lambda: self.dom.updateDeviceFlags(xml.decode(), lv.VIR_DOMAIN_AFFECT_LIVE))

    def detach(self, xml: bytes) -> None:
        """Ask for a device's hot-unplug (``virsh detach-device --live``); the guest may
        finish it later: callers wait until the device is gone from ``xml()``."""
        lv = binding()
        self.call("detach-device", lambda: self.dom.detachDeviceFlags(xml.decode(), lv.VIR_DOMAIN_AFFECT_LIVE))

    def block_resize(self, target: str, size_bytes: int) -> None:
        lv = binding()
        self.call(f"blockresize {target} of",
                  lambda: self.dom.blockResize(target, size_bytes, lv.VIR_DOMAIN_BLOCK_RESIZE_BYTES))

    def set_metadata(self, element: etree._Element, *, key: str, namespace: str) -> None:
        """Put ``element`` (in ``namespace``) into the domain's ``<metadata>``, replacing what
        it had in that namespace: in the running domain, and in its persistent definition
        too when it has one (OpenNebula's domains are transient: live only)."""
        lv = binding()
        persistent = self.call("persistence of", self.dom.isPersistent)
        flags = lv.VIR_DOMAIN_AFFECT_LIVE | (lv.VIR_DOMAIN_AFFECT_CONFIG if persistent else 0)
        # libvirt puts every element of what it is given into ``namespace`` itself, and
        # refuses XML that declares one already: it gets the elements by their local names
        plain = copy.deepcopy(element)
        for el in plain.iter():
            if isinstance(el.tag, str):
                el.tag = etree.QName(el).localname
        etree.cleanup_namespaces(plain)
        text = etree.tostring(plain).decode()
        self.call("metadata of", lambda: self.dom.setMetadata(lv.VIR_DOMAIN_METADATA_ELEMENT, text, key, namespace,
                                                              flags))

    def fs_freeze(self) -> None:
        self.call("domfsfreeze", lambda: self.dom.fsFreeze(None, 0))

    def fs_thaw(self) -> None:
        self.call("domfsthaw", lambda: self.dom.fsThaw(None, 0))

    def destroy(self) -> None:
        self.call("destroy", self.dom.destroy)

    def snapshots(self) -> list[tuple[str, bytes]]:
        """The domain's libvirt snapshots as (name, XML with security info), parents first
        (``snapshot-list --topological`` + ``snapshot-dumpxml --security-info``)."""
        lv = binding()
        found = self.call("snapshot-list", lambda: self.dom.listAllSnapshots(lv.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL))
        out: list[tuple[str, bytes]] = []
        for snap in found:
            name = str(snap.getName())

            def dump(snap: Any = snap) -> str:
                return str(snap.getXMLDesc(lv.VIR_DOMAIN_SNAPSHOT_XML_SECURE))

            out.append((name, self.call(f"snapshot-dumpxml {name} of", dump).encode()))
        return out

    def current_snapshot(self) -> str:
        """The name of the domain's current snapshot, "" without one."""
        if not self.call("snapshot-current", lambda: self.dom.hasCurrentSnapshot(0)):
            return ""
        return str(self.call("snapshot-current", lambda: self.dom.snapshotCurrent(0).getName()))

    def drop_snapshot_metadata(self, name: str) -> None:
        """Forget libvirt snapshot ``name``; its data stays (``snapshot-delete --metadata``)."""
        lv = binding()
        snap = self.call(f"snapshot {name} of", lambda: self.dom.snapshotLookupByName(name, 0))
        self.call(f"snapshot-delete {name} of", lambda: snap.delete(lv.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY))

    def redefine_snapshot(self, xml: bytes, *, current: bool = False) -> None:
        """Define a snapshot's metadata again (``snapshot-create --redefine [--current]``)."""
        lv = binding()
        flags = lv.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE | (lv.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT if current else 0)
        self.call("snapshot-create --redefine", lambda: self.dom.snapshotCreateXML(xml.decode(), flags))

    def sync_time(self) -> None:
        """Set the guest clock from the host's through the guest agent (``domtime --sync``)."""
        lv = binding()
        self.call("domtime --sync", lambda: self.dom.setTime(None, lv.VIR_DOMAIN_TIME_SYNC))

    def save(self, path: str) -> None:
        """``virsh save DOMAIN PATH``: the guest's memory into ``path`` on the host; the
        domain is gone afterwards."""
        self.call(f"save to {path}", lambda: self.dom.save(path))

    def migrate(self, dst: Hypervisor, *, flags: int, params: dict[str, Any], p2p_uri: str | None = None) -> None:
        """Live-migrate to ``dst``: managed by this process, which holds connections to
        both hosts (as ``virsh migrate`` on the source does), or peer-to-peer to ``p2p_uri``
        (the destination as the source host sees it) when ``flags`` has PEER2PEER."""
        lv = binding()
        if flags & lv.VIR_MIGRATE_PEER2PEER:
            assert p2p_uri is not None
            self.hv.call(f"migrate {self.name} to {p2p_uri}", lambda: self.dom.migrateToURI3(p2p_uri, params, flags))
        else:
            dconn = dst.conn
            self.hv.call(f"migrate {self.name} to {dst.name}", lambda: self.dom.migrate3(dconn, params, flags))


# --- guest file systems frozen around a snapshot -------------------------------------------------

class Freeze:
    """What ``fs_frozen`` did: ``frozen`` (the agent froze the guest), else ``why_not``;
    ``thaw_error`` when the thaw failed (the guest's file systems may still be frozen)."""

    def __init__(self) -> None:
        self.frozen = False
        self.why_not = ""
        self.thaw_error = ""


@contextlib.contextmanager
def fs_frozen(config: Config, host: str, name: str) -> Iterator[Freeze]:
    """The file systems of domain ``name`` on ``host`` frozen by its guest agent for the
    block (libvirt-python fsFreeze/fsThaw over the host's libvirt URI), thawed in a
    ``finally`` whatever the block does. A guest that cannot be frozen (no agent, no such
    domain, libvirt not reachable) is no error: the block runs unfrozen and ``why_not``
    says why. A failed thaw is logged and left in ``thaw_error`` for the caller to judge."""
    state = Freeze()
    hv = Hypervisor(config, host)
    try:
        try:
            dom = hv.domain(name)
            dom.fs_freeze()
            state.frozen = True
        except DriverError as exc:
            state.why_not = str(exc)
        try:
            yield state
        finally:
            if state.frozen:
                try:
                    dom.fs_thaw()
                except DriverError as exc:
                    state.thaw_error = str(exc)
                    log.error(f"{name}: guest file systems not thawed: {exc}")
    finally:
        hv.close()


# --- migration options ---------------------------------------------------------------------------

# ``virsh migrate`` options (kvmrc's MIGRATE_OPTIONS) -> libvirt flag names / parameters
_MIGRATE_FLAGS = {
    "--live": "VIR_MIGRATE_LIVE", "--p2p": "VIR_MIGRATE_PEER2PEER", "--tunnelled": "VIR_MIGRATE_TUNNELLED",
    "--persistent": "VIR_MIGRATE_PERSIST_DEST", "--undefinesource": "VIR_MIGRATE_UNDEFINE_SOURCE",
    "--suspend": "VIR_MIGRATE_PAUSED", "--copy-storage-all": "VIR_MIGRATE_NON_SHARED_DISK",
    "--copy-storage-inc": "VIR_MIGRATE_NON_SHARED_INC", "--change-protection": "VIR_MIGRATE_CHANGE_PROTECTION",
    "--unsafe": "VIR_MIGRATE_UNSAFE", "--compressed": "VIR_MIGRATE_COMPRESSED",
    "--abort-on-error": "VIR_MIGRATE_ABORT_ON_ERROR", "--auto-converge": "VIR_MIGRATE_AUTO_CONVERGE",
    "--rdma-pin-all": "VIR_MIGRATE_RDMA_PIN_ALL", "--postcopy": "VIR_MIGRATE_POSTCOPY",
    "--tls": "VIR_MIGRATE_TLS", "--parallel": "VIR_MIGRATE_PARALLEL", "--zerocopy": "VIR_MIGRATE_ZEROCOPY",
}
_MIGRATE_PARAMS = {  # option -> (parameter name, type)
    "--migrateuri": ("VIR_MIGRATE_PARAM_URI", str), "--listen-address": ("VIR_MIGRATE_PARAM_LISTEN_ADDRESS", str),
    "--dname": ("VIR_MIGRATE_PARAM_DEST_NAME", str), "--bandwidth": ("VIR_MIGRATE_PARAM_BANDWIDTH", int),
    "--parallel-connections": ("VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS", int),
    "--disks-port": ("VIR_MIGRATE_PARAM_DISKS_PORT", int), "--comp-methods": ("VIR_MIGRATE_PARAM_COMPRESSION", str),
    "--tls-destination": ("VIR_MIGRATE_PARAM_TLS_DESTINATION", str),
}
_IGNORED = ("--verbose",)


def migrate_options(raw: str) -> tuple[int, dict[str, Any]]:
    """MIGRATE_OPTIONS (``virsh migrate`` options) as libvirt flags and parameters; an
    option that has no libvirt equivalent here is a one-line configuration error."""
    lv = binding()
    flags, params = 0, {}
    words = options(raw, "MIGRATE_OPTIONS")
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if name in _MIGRATE_FLAGS and not eq:
            flags |= getattr(lv, _MIGRATE_FLAGS[name])
        elif name in _MIGRATE_PARAMS:
            if not eq:
                i += 1
                if i >= len(words):
                    raise DriverError(f"configuration MIGRATE_OPTIONS: {name} needs a value")
                value = words[i]
            param, kind = _MIGRATE_PARAMS[name]
            number = numbers.whole(value, f"configuration MIGRATE_OPTIONS: {name}", unit="a number") \
                if kind is int else 0
            params[getattr(lv, param)] = number if kind is int else value
        elif name not in _IGNORED:
            raise DriverError(f"configuration MIGRATE_OPTIONS: {word!r} is not a virsh migrate option "
                              "one-tweaks passes to libvirt")
        i += 1
    return flags, params


# --- the VM directory in a domain ----------------------------------------------------------------

def metadata_dir(domain: etree._Element) -> str:
    """The VM directory oned wrote into the domain's metadata (``one:system_datastore``),
    normalised; "" when the domain does not say."""
    found = domain.find(f"metadata/{{{ONE_NS}}}vm/{{{ONE_NS}}}system_datastore")
    raw = (found.text or "").strip() if found is not None else ""
    if not raw:
        return ""
    try:
        return clean_path(raw, "system datastore directory").rstrip("/")
    except DriverError:
        return ""


def relocate(domain: etree._Element, old_dir: str, new_dir: str) -> int:
    """Point every path under ``old_dir`` (disk sources, the metadata, ...) to ``new_dir``:
    hosts with their own DATASTORE_LOCATION see one VM directory under different paths.
    Returns how many values changed."""
    old_dir, new_dir = old_dir.rstrip("/"), new_dir.rstrip("/")
    if not old_dir or old_dir == new_dir:
        return 0
    changed = 0

    def moved(value: str) -> str | None:
        if not value.startswith("/"):
            return None
        try:
            norm = clean_path(value.strip(), "path")
        except DriverError:
            return None
        if norm == old_dir:
            return new_dir
        if norm.startswith(old_dir + "/"):
            return new_dir + norm[len(old_dir):]
        return None

    for el in domain.iter():
        if not isinstance(el.tag, str):
            continue
        for key, value in el.attrib.items():
            new = moved(value if isinstance(value, str) else value.decode(errors="replace"))
            if new is not None:
                el.set(key, new)
                changed += 1
        if el.text and el.text.strip():
            new = moved(el.text)
            if new is not None:
                el.text = new
                changed += 1
    return changed


# --- a domain's disks ----------------------------------------------------------------------------

def disk_source(disk: etree._Element) -> str:
    """The disk's source path, slashes collapsed as in the paths the actions are given
    (oned writes ``/var/lib/one//datastores/...`` into deployment files)."""
    source = disk.find("source")
    if source is None:
        return ""
    return re.sub(r"/{2,}", "/", source.get("dev") or source.get("file") or "")


def disk_target(disk: etree._Element) -> str:
    tgt = disk.find("target")
    return (tgt.get("dev") or "") if tgt is not None else ""


def live_disks(domain: etree._Element) -> list[etree._Element]:
    return list(domain.iterfind("devices/disk"))


def is_empty_cdrom(disk: etree._Element) -> bool:
    """A CD-ROM drive with no medium (the persistent_cdrom tweak's slots, or an ejected one)."""
    if disk.get("device") != "cdrom":
        return False
    source = disk.find("source")
    return source is None or not any(source.get(a) for a in ("dev", "file", "name", "volume", "pool"))
