"""A test double of the OpenNebula front-end (NOT oned, NOT OpenNebula's drivers).

Built on the ``cloud`` harness (tests/storage_env.py): for a VM document registered in the
oned double (``cloud.oned``) it does what oned and its drivers do around our scripts:

- renders the deployment file the way oned's LibVirtDriverKVM.cc does (6.10 layout of
  tests/fixtures/opennebula/deployment.0.xml; ``version="7.2"``: no second ``<devices>``
  block, disk ``<serial>``), adapted to this machine: emulator /usr/bin/qemu-system-x86_64,
  no bridge NIC, VNC on 127.0.0.1, the nested-KVM CPU element (TCG when there is no KVM);
- writes ``/var/lib/one/vms/<vid>/transfer.<seq>.prolog|epilog`` with the lines of
  tests/fixtures/opennebula/transfer-examples.txt and runs each as one_tm.rb does (first word
  lowercased = script ``tm/<tm_mad>/<name>``, the rest its argv);
- calls the VMM local overrides with oned's argv and the base64 driver message on stdin
  (deploy-tweaks: ``<local deployment file> <host> <vmid> <host>``, the domain XML), with a
  stand-in of the remote ``vmm/kvm/deploy`` (stores the file, ``virsh create``, prints UUID);
- storage lifecycle (its own section): image import (DS ``stat`` + ``cp``) and delete (DS
  ``rm``; refused while VMs use the image, as oned does), SAVE/RESTORE through the local
  overrides ``save-tweaks``/``restore-tweaks`` (or a seed alias such as ``tmsave``) for
  suspend, stop (``transfer.<seq>.stop``/``.resume`` MV lines host <-> front-end) and resume,
  disk-saveas (DS ``mkfs`` FORMAT=save_as, then the CPDS line), and backup (the BACKUP TM
  steps ``prebackup[_live]``/``postbackup[_live]`` with the plain ``<VM>`` on stdin, the
  backup datastore being a stand-in that fetches the files from the host). Where 6.10 and
  7.2 call a driver the same way (everything but the deployment file, per OpenNebula's
  driver documentation) one code path serves both. For a block system
  datastore the save/restore overrides run ``virsh save``/``restore`` on the host
  themselves; OpenNebula's remote ``vmm/kvm/save``/``restore`` would only run for other
  TM_MADs and are not installed here.
- live machinery (its own section, last): direct kernel boot (OS/KERNEL, INITRD,
  KERNEL_CMD rendered into ``<os>``), live MIGRATE (``migrate``: a new history record,
  tm premigrate/postmigrate/failmigrate around ``migrate-tweaks``) and RESIZEDISK
  (``resize_disk``: the TM RESIZE line, then ``resize_disk-tweaks`` when running).

Where the scripts come from (its own section, ``InstalledFrontend``): by default the tests'
remotes tree (``tests/drivers.py``: ``REMOTES/tm/<tm_mad>/<action>``,
``REMOTES/datastore/<ds_mad>/<action>`` from the install plan, ``REMOTES/vmm/kvm/<script>``
as committed), run with this interpreter (``sys.executable``), the VMM local
overrides by the names ``one-tweaks install`` gives them. With ``installed=InstalledFrontend(
remotes, oned_conf)`` it works like oned on a front-end ``one-tweaks install`` set up: it runs
``REMOTES/tm/<tm_mad>/<action>`` and ``REMOTES/datastore/<ds_mad>/<action>`` directly (their
own ``#!`` interpreter, no ``sys.executable``), and takes each VMM local action from the kvm
VM_MAD's ``-l action=script`` list in that oned.conf (``REMOTES/vmm/<hypervisor>/<script>``,
as one_vmm_exec.rb does); an action not in the list is remote, and as OpenNebula's remote
scripts are not here, asking for one fails. Every executed path is recorded in ``executed``.
"""

from __future__ import annotations

import base64
import copy
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import drivers
from lxml import etree

from onelib.install.plan import VMM_OVERRIDES

from . import oned as oned_sim

QEMU = "/usr/bin/qemu-system-x86_64"
VM_POWEROFF = 8
VM_STOPPED, VM_SUSPENDED = 4, 5
# LCM states (VirtualMachine.h) the storage lifecycle passes through
LCM_SAVE_STOP, LCM_SAVE_SUSPEND, LCM_PROLOG_RESUME, LCM_EPILOG_STOP = 5, 6, 9, 10
LCM_BOOT_SUSPENDED, LCM_BOOT_STOPPED, LCM_BACKUP, LCM_BACKUP_POWEROFF = 21, 22, 69, 70
KVM_CPU = ("<cpu mode='host-passthrough' check='none' migratable='on'>"
           "<feature policy='disable' name='arch-capabilities'/></cpu>")
STANDIN_DEPLOY = """#!/bin/bash
# Test stand-in for OpenNebula's remote vmm/kvm/deploy (NOT OpenNebula's script): stores
# stdin as the deployment file, creates the transient domain and prints its UUID.
set -euo pipefail
cat > "$1"
name=$(xmllint --xpath 'string(/domain/name)' "$1")
virsh --connect qemu:///system create "$1" {paused} >/dev/null
uuid=$(virsh --connect qemu:///system domuuid "$name")
echo "${{uuid%%[[:space:]]*}}"
"""


class DriverFailed(AssertionError):
    """A driver exited non-zero (or could not run): ``returncode`` and raw ``stderr`` kept
    for the tests that check what oned would make of them."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr: bytes = b"") -> None:
        super().__init__(message)
        self.returncode, self.stderr = returncode, stderr


class Refused(AssertionError):
    """oned refused the request before calling any driver (e.g. deleting an image in use)."""


def _ok(proc: subprocess.CompletedProcess[bytes], what: str) -> str:
    if proc.returncode != 0:
        raise DriverFailed(f"{what}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')}",
                           returncode=proc.returncode, stderr=proc.stderr)
    return proc.stdout.decode()


# --- an installed front-end: remotes directory and oned.conf ------------------------------------

def _strip_comments(text: str) -> str:
    """oned.conf without its ``#`` comments (a ``#`` inside a quoted value stays)."""
    out: list[str] = []
    quoted, k = False, 0
    while k < len(text):
        ch = text[k]
        if ch == "\\" and quoted:
            out.append(text[k:k + 2])
            k += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            eol = text.find("\n", k)
            k = len(text) if eol < 0 else eol
            continue
        out.append(ch)
        k += 1
    return "".join(out)


_VECTOR = re.compile(r'(?m)^\s*([A-Z_]+)\s*=\s*\[((?:[^\]"]|"(?:[^"\\]|\\.)*")*)\]')
_PAIR = re.compile(r'([A-Za-z_]+)\s*=\s*"((?:[^"\\]|\\.)*)"')
# one_vmm_exec.rb's options with a value: required (-l, -s) or optional (-r, -t, -w: GetoptLong
# takes the next word unless it is an option)
_VMM_EXEC_REQUIRED = {"-l", "--local", "-s", "--shell"}
_VMM_EXEC_OPTIONAL = {"-r", "--retries", "-t", "--threads", "-w", "--timeout"}


def vm_mads(conf_text: str) -> list[dict[str, str]]:
    """Every ``VM_MAD = [ KEY = "value", ... ]`` vector of an oned.conf, keys upper-cased.
    Written for this double, independent of the installer's parser (onelib/install/template.py)."""
    return [{k.upper(): v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _PAIR.findall(body)}
            for name, body in _VECTOR.findall(_strip_comments(conf_text)) if name == "VM_MAD"]


def vmm_exec_arguments(arguments: str) -> tuple[str, dict[str, str]]:
    """(hypervisor, local actions) of one_vmm_exec's ARGUMENTS as GetoptLong and
    OpenNebulaDriver.parse_actions_list read them: the last ``-l``/``--local`` wins; each item
    ``ACTION=script`` or ``ACTION`` (script = the action's name in lower case), the action
    upper-cased; the hypervisor is the first word that is no option or option value."""
    words, local, hypervisor, k = arguments.split(), "", "", 0
    while k < len(words):
        word = words[k]
        value = words[k + 1] if k + 1 < len(words) else None
        if word in _VMM_EXEC_REQUIRED or (word in _VMM_EXEC_OPTIONAL and value and not value.startswith("-")):
            if word in ("-l", "--local"):
                local = value or ""
            k += 2
            continue
        if word.startswith("--local="):
            local = word.split("=", 1)[1]
        elif word.startswith("-l") and not word.startswith("--"):
            local = word[2:]
        elif not word.startswith("-") and not hypervisor:
            hypervisor = word
        k += 1
    actions: dict[str, str] = {}
    for item in (s.strip() for s in re.split(r"\s*,\s*", local)):
        m = re.fullmatch(r"([^=]+)(=(.*))?", item)
        if m:
            actions[m.group(1).upper()] = (m.group(3) or "").strip() if m.group(2) else m.group(1).lower()
    return hypervisor, actions


@dataclass
class InstalledFrontend:
    """A front-end as ``one-tweaks install --remotes REMOTES --oned-conf ONED_CONF`` left it:
    the Frontend double runs the executables under ``remotes`` and reads the kvm VM_MAD of
    ``oned_conf`` (``vm_mad``: its NAME) the way oned does (see the module doc)."""

    remotes: Path
    oned_conf: Path
    vm_mad: str = "kvm"
    hypervisor: str = field(init=False, default="")
    local: dict[str, str] = field(init=False, default_factory=dict)  # ACTION -> script

    def __post_init__(self) -> None:
        self.remotes, self.oned_conf = Path(self.remotes), Path(self.oned_conf)
        mads = [m for m in vm_mads(self.oned_conf.read_text(encoding="utf-8")) if m.get("NAME") == self.vm_mad]
        if len(mads) != 1:
            raise ValueError(f"{self.oned_conf}: {len(mads)} VM_MAD vectors with NAME={self.vm_mad!r}")
        self.hypervisor, self.local = vmm_exec_arguments(mads[0].get("ARGUMENTS", ""))
        if not self.hypervisor:
            raise ValueError(f"{self.oned_conf}: VM_MAD {self.vm_mad}: no hypervisor in ARGUMENTS")

    def vmm_script(self, action: str) -> Path:
        """``REMOTES/vmm/<hypervisor>/<script>`` of a local action (``deploy``, ``save``,
        ``snapshotcreate``, ...); a remote one raises DriverFailed (no stock scripts here)."""
        script = self.local.get(action.upper())
        if script is None:
            raise DriverFailed(f"{action} is not a local action of VM_MAD {self.vm_mad} in {self.oned_conf} "
                               f"(-l {','.join(f'{k.lower()}={v}' for k, v in self.local.items()) or 'empty'}): "
                               f"oned would run OpenNebula's remote vmm/{self.hypervisor}/{action}, "
                               "which this front-end double does not have")
        return self.remotes / "vmm" / self.hypervisor / script


class Frontend:
    """oned's side of a VM's life on ``cloud`` (see the module doc)."""

    def __init__(self, cloud: Any, *, version: str = "6.10", paused: bool = True, hostname: str = "one-fe",
                 kvm: bool | None = None, installed: InstalledFrontend | None = None, nics: bool = False) -> None:
        if version not in ("6.10", "7.2"):
            raise ValueError(f"version {version!r}: 6.10 or 7.2")
        self.cloud, self.version, self.hostname = cloud, version, hostname
        self.kvm = Path("/dev/kvm").exists() if kvm is None else kvm
        self.repo = Path(__file__).resolve().parent.parent.parent
        self.installed = installed
        self.nics = nics  # render the VM's NICs (give them unique TARGETs and no BRIDGE: type ethernet)
        self.transfers: list[Path] = []
        self.executed: list[Path] = []  # every driver executable run, in order
        self.commands: list[list[str]] = []  # and the command line of each (argv[0] first)
        self.stderr: list[tuple[str, bytes]] = []  # (what, stderr) of each: VM log lines
        remotes = cloud.root / "remotes"
        script = remotes / "vmm" / "kvm" / "deploy"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(STANDIN_DEPLOY.format(paused="--paused" if paused else ""))
        script.chmod(0o755)
        cloud.configure(SCRIPTS_REMOTE_DIR=str(remotes))

    # --- the VM document --------------------------------------------------------------------------

    def vm(self, vm_id: int) -> etree._Element:
        return self.cloud.oned.vm(vm_id)  # type: ignore[no-any-return]

    def host(self, vm_id: int) -> str:
        return self.vm(vm_id).findtext("HISTORY_RECORDS/HISTORY[last()]/HOSTNAME", "")

    def system_ds(self, vm_id: int) -> int:
        return int(self.vm(vm_id).findtext("HISTORY_RECORDS/HISTORY[last()]/DS_ID", "0"))

    def seq(self, vm_id: int) -> int:
        return int(self.vm(vm_id).findtext("HISTORY_RECORDS/HISTORY[last()]/SEQ", "0") or 0)

    def vms_dir(self, vm_id: int) -> Path:
        path = Path(self.cloud.home) / "vms" / str(vm_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def system_dir(self, vm_id: int) -> str:
        return self.cloud.tm_path(self.host(vm_id), vm_id, ds_id=self.system_ds(vm_id)).split(":", 1)[1]  # type: ignore[no-any-return]

    def deploy_id(self, vm_id: int) -> str:
        return self.vm(vm_id).findtext("DEPLOY_ID", "") or f"one-{vm_id}"

    def _set(self, vm_id: int, path: str, value: object) -> None:
        el = self.vm(vm_id).find(path)
        assert el is not None, path
        el.text = str(value)

    # --- the driver executables (repository or installed front-end) -------------------------------

    def scripts_dir(self) -> Path:
        """Where oned finds the drivers: the installed remotes directory, else the tests' remotes
        tree (tests/drivers.py: the repository commits no per-driver executables)."""
        return self.installed.remotes if self.installed is not None else drivers.REMOTES

    def tm_script(self, tm_mad: str, action: str) -> Path:
        return self.scripts_dir() / "tm" / tm_mad / action

    def execute(self, path: Path, argv: list[str], stdin: bytes, what: str, *, timeout: float) -> str:
        """Run a driver executable as oned does: installed, the file itself (its ``#!``
        interpreter); from the repository, with this interpreter. Recorded in ``executed`` (and ``commands``);
        a non-zero exit raises DriverFailed."""
        if not path.is_file():
            raise DriverFailed(f"{what}: {path} is not installed")
        command = [str(path), *argv] if self.installed is not None else [sys.executable, str(path), *argv]
        self.executed.append(path)
        self.commands.append(command)
        proc = subprocess.run(command, input=stdin, capture_output=True, env=self.cloud.env, cwd=self.cloud.home,
                              timeout=timeout, check=False)
        self.stderr.append((what, proc.stderr))
        return _ok(proc, what)

    # --- the deployment file (LibVirtDriverKVM.cc) ------------------------------------------------

    def render(self, vm_id: int) -> bytes:
        vm = self.vm(vm_id)
        tpl = vm.find("TEMPLATE")
        assert tpl is not None
        sysdir = self.system_dir(vm_id)
        machine = tpl.findtext("OS/MACHINE", "") or "pc"
        out = [f"<domain type='{'kvm' if self.kvm else 'qemu'}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
               f"\t<name>one-{vm_id}</name>", f"\t<title>{vm.findtext('NAME')}</title>",
               f"\t<vcpu><![CDATA[{tpl.findtext('VCPU', '1')}]]></vcpu>",
               f"\t<cputune><shares>{int(float(tpl.findtext('CPU', '1')) * 1024)}</shares></cputune>",
               f"\t<memory>{int(tpl.findtext('MEMORY', '128')) * 1024}</memory>",
               f"\t<os><type arch='x86_64' machine='{machine}'>hvm</type>{self.os_boot(vm_id)}</os>"]
        if self.kvm:
            out.append("\t" + KVM_CPU)
        iothreads = tpl.findtext("FEATURES/IOTHREADS", "")
        if iothreads.isdigit() and int(iothreads) > 0:
            out.append(f"\t<iothreads>{iothreads}</iothreads>")
        out += ["\t<devices>", f"\t\t<emulator><![CDATA[{QEMU}]]></emulator>"]
        hd_bus = "sata" if machine.startswith("q35") else "ide"
        for disk in tpl.iterfind("DISK"):
            target = disk.findtext("TARGET", "")
            src = f"{sysdir}/disk.{disk.findtext('DISK_ID')}"
            block = disk.findtext("DISK_TYPE") == "BLOCK"
            bus = {"vd": " bus='virtio'", "sd": "", "hd": f" bus='{hd_bus}'"}.get(target[:2], "")
            io = " io='native'" if block else ""
            serial = disk.findtext("SERIAL", "") if self.version.startswith("7") else ""
            out.append(f"\t\t<disk type='{'block' if block else 'file'}' device='disk'>"
                       f"<source {'dev' if block else 'file'}='{src}'/><target dev='{target}'{bus}/>"
                       + (f"<serial><![CDATA[{serial}]]></serial>" if serial else "")
                       + f"<driver name='qemu' type='raw' cache='none'{io} discard='unmap'/></disk>")
        ctx = tpl.find("CONTEXT")
        if ctx is not None:
            out.append(f"\t\t<disk type='file' device='cdrom'><source file='{sysdir}/disk.{ctx.findtext('DISK_ID')}'/>"
                       f"<target dev='{ctx.findtext('TARGET')}' bus='{hd_bus}'/><readonly/>"
                       "<driver name='qemu' type='raw'/></disk>")
        out.append("\t\t<controller type='scsi' index='0' model='virtio-scsi'><driver queues='1'/></controller>")
        for nic in tpl.iterfind("NIC") if self.nics else ():
            out.append(self.render_nic(nic))
        if tpl.find("GRAPHICS") is not None:
            out.append(f"\t\t<graphics type='vnc' listen='127.0.0.1' port='{5900 + vm_id}'/>")
        out.append("\t</devices>")
        if self.version == "6.10" and machine.startswith("q35"):
            out.append("\t<devices><controller index='0' type='pci' model='pcie-root'/>"
                       + "<controller type='pci' model='pcie-root-port'/>" * 16
                       + "<controller type='pci' model='pcie-to-pci-bridge'/></devices>")
        out.append("\t<features><acpi/></features>")
        if tpl.findtext("FEATURES/GUEST_AGENT", "").lower() == "yes":
            out.append("\t<devices><channel type='unix'><source mode='bind'/>"
                       "<target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices>")
        full = {"6.10": "6.10.0", "7.2": "7.2.0"}[self.version]
        out += ["\t<metadata>", "\t\t<one:vm xmlns:one=\"http://opennebula.org/xmlns/libvirt/1.0\">",
                f"\t\t\t<one:system_datastore><![CDATA[{sysdir}]]></one:system_datastore>",
                f"\t\t\t<one:name><![CDATA[{vm.findtext('NAME')}]]></one:name>",
                f"\t\t\t<one:opennebula_version>{full}</one:opennebula_version>",
                f"\t\t\t<one:stime>{vm.findtext('STIME')}</one:stime>", "\t\t</one:vm>", "\t</metadata>",
                "</domain>", ""]
        return "\n".join(out).encode()

    @staticmethod
    def render_nic(nic: etree._Element) -> str:
        """A NIC as LibVirtDriverKVM.cc writes it: type bridge with its source bridge, or
        ethernet without one; mac, target, model, vhost queues from VIRTIO_QUEUES."""
        bridge, model = nic.findtext("BRIDGE", ""), nic.findtext("MODEL", "")
        queues = nic.findtext("VIRTIO_QUEUES", "")
        return ("\t\t<interface type='" + ("bridge" if bridge else "ethernet") + "'>"
                + (f"<source bridge='{bridge}'/>" if bridge else "")
                + f"<mac address='{nic.findtext('MAC')}'/><target dev='{nic.findtext('TARGET')}'/>"
                + (f"<model type='{model}'/>" if model else "")
                + (f"<driver name='vhost' queues='{queues}'/>" if model == "virtio" and queues else "")
                + "</interface>")

    # --- transfer files (TransferManager.cc, one_tm.rb) ------------------------------------------

    def _path(self, vm_id: int, disk_id: int | str | None = None) -> str:
        return self.cloud.tm_path(self.host(vm_id), vm_id, None if disk_id is None else int(disk_id),  # type: ignore[no-any-return]
                                  ds_id=self.system_ds(vm_id))

    def prolog_lines(self, vm_id: int) -> list[str]:
        vid, sysds, lines = str(vm_id), str(self.system_ds(vm_id)), []
        for disk in self.vm(vm_id).iterfind("TEMPLATE/DISK"):
            tm, dst = disk.findtext("TM_MAD", ""), self._path(vm_id, disk.findtext("DISK_ID"))
            kind = disk.findtext("TYPE", "").lower()
            if kind == "fs":
                lines.append(shlex.join(["MKIMAGE", tm, disk.findtext("SIZE", ""), disk.findtext("FORMAT", "raw"),
                                         dst, vid, sysds]))
            elif kind == "swap":
                lines.append(shlex.join(["MKSWAP", tm, disk.findtext("SIZE", ""), dst, vid, sysds]))
            else:
                source = disk.findtext("SOURCE", "")
                source = source if ":" in source else f"{self.hostname}:{source}"
                verb = "CLONE" if disk.findtext("CLONE") == "YES" else "LN"
                lines.append(shlex.join([verb, tm, source, dst, vid, disk.findtext("DATASTORE_ID", "")]))
        return lines

    def epilog_lines(self, vm_id: int) -> list[str]:
        vid, sysds, lines = str(vm_id), str(self.system_ds(vm_id)), []
        tm_sys = self.vm(vm_id).findtext("HISTORY_RECORDS/HISTORY[last()]/TM_MAD", "")
        for disk in self.vm(vm_id).iterfind("TEMPLATE/DISK"):
            tm, dst = disk.findtext("TM_MAD", ""), self._path(vm_id, disk.findtext("DISK_ID"))
            if disk.findtext("TYPE", "").lower() in ("fs", "swap"):
                lines.append(shlex.join(["DELETE", tm, dst, vid, sysds]))
            elif disk.findtext("PERSISTENT") == "YES":
                lines.append(shlex.join(["MVDS", tm, dst, disk.findtext("SOURCE", ""), vid,
                                         disk.findtext("DATASTORE_ID", "")]))
            else:
                lines.append(shlex.join(["DELETE", tm, dst, vid, disk.findtext("DATASTORE_ID", "")]))
        lines.append(shlex.join(["DELETE", tm_sys, self._path(vm_id), vid, sysds]))
        return lines

    def context_line(self, vm_id: int) -> str | None:
        ctx = self.vm(vm_id).find("TEMPLATE/CONTEXT")
        if ctx is None:
            return None
        script = self.vms_dir(vm_id) / "context.sh"
        body = "".join(f"{el.tag}={shlex.quote(el.text or '')}\n" for el in ctx)
        script.write_text(f"# Context variables generated by OpenNebula\n{body}")
        tm = self.vm(vm_id).findtext("HISTORY_RECORDS/HISTORY[last()]/TM_MAD", "")
        return shlex.join(["CONTEXT", tm, str(script), self._path(vm_id, ctx.findtext("DISK_ID")), str(vm_id),
                           str(self.system_ds(vm_id))])

    def run_line(self, line: str) -> str:
        """One transfer line as one_tm.rb runs it."""
        words = shlex.split(line)
        name, tm_mad, argv = words[0].lower(), words[1], words[2:]
        script = self.tm_script(tm_mad, name)
        if not script.exists() and "." in name:  # CLONE.ssh -> clone.ssh, else clone
            script = self.tm_script(tm_mad, name.split(".", 1)[0])
        return self.execute(script, argv, b"", line, timeout=180)

    def transfer(self, vm_id: int, kind: str, lines: list[str]) -> Path:
        """Write ``transfer.<seq>.<kind>`` and run its lines in order (the first failure raises)."""
        path = self.vms_dir(vm_id) / f"transfer.{self.seq(vm_id)}.{kind}"
        path.write_text("".join(f"{line}\n" for line in lines))
        self.transfers.append(path)
        for line in lines:
            self.run_line(line)
        return path

    # --- VMM -----------------------------------------------------------------------------------------

    def message(self, vm_id: int, **extra: str) -> bytes:
        """The ``<VMM_DRIVER_ACTION_DATA>`` oned sends (plain XML)."""
        root = etree.Element("VMM_DRIVER_ACTION_DATA")
        fields = {"HOST": self.host(vm_id), "MIGR_HOST": "", "DEPLOY_ID": self.vm(vm_id).findtext("DEPLOY_ID", ""),
                  **extra}
        for key, value in fields.items():
            etree.SubElement(root, key).text = value
        root.append(self.cloud.oned.served("vm", vm_id))
        root.append(self.cloud.oned.served("datastore", self.system_ds(vm_id)))
        return etree.tostring(root)

    def vmm(self, script: str, *argv: str, stdin: bytes) -> str:
        """A local override ``vmm/kvm/<script>`` (installed: ``vmm/<hypervisor>/<script>``):
        oned's argv, base64 stdin."""
        hypervisor = self.installed.hypervisor if self.installed else "kvm"
        path = self.scripts_dir() / "vmm" / hypervisor / script
        return self.execute(path, list(argv), base64.b64encode(stdin), f"vmm/{hypervisor}/{script} {shlex.join(argv)}",
                            timeout=180)

    def vmm_action(self, action: str, *argv: str, stdin: bytes) -> str:
        """The VMM action ``action`` (oned's name: deploy, save, snapshotcreate, ...) through the
        local override the front-end configures for it (``local_script``)."""
        return self.vmm(self.local_script(action), *argv, stdin=stdin)

    # --- actions ---------------------------------------------------------------------------------------

    def prolog(self, vm_id: int) -> Path:
        return self.transfer(vm_id, "prolog", self.prolog_lines(vm_id))

    def deploy(self, vm_id: int, *, prolog: bool = True) -> str:
        """PROLOG (``prolog=False``: disks already there), then DEPLOY: the context line
        (TM_COMMAND), ``deploy-tweaks``; the printed UUID becomes DEPLOY_ID, the VM RUNNING."""
        if prolog:
            self.prolog(vm_id)
        ctx = self.context_line(vm_id)
        if ctx is not None:
            self.run_line(ctx)
        local = self.vms_dir(vm_id) / f"deployment.{self.seq(vm_id)}"
        domain = self.render(vm_id)
        local.write_bytes(domain)
        host = self.host(vm_id)
        uuid = self.vmm_action("deploy", str(local), host, str(vm_id), host, stdin=domain).split()[0]
        self._set(vm_id, "DEPLOY_ID", uuid)
        self._set(vm_id, "STATE", oned_sim.VM_ACTIVE)
        self._set(vm_id, "LCM_STATE", oned_sim.LCM_RUNNING)
        return uuid

    def attach_disk(self, vm_id: int, disk: etree._Element) -> None:
        """ATTACHDISK: the DISK joins the template with ATTACH=YES, the TM CLONE/LN line makes
        ``disk.N``, then ``attach_disk <deploy_id> <disk.N> <target> <index> <b64 msg> <vmid>
        <host>`` (the message on stdin too); ATTACH goes once it worked."""
        tpl = self.vm(vm_id).find("TEMPLATE")
        assert tpl is not None
        disks = tpl.findall("DISK")
        (disks[-1].addnext if disks else tpl.append)(disk)
        etree.SubElement(disk, "ATTACH").text = "YES"
        disk_id, host = disk.findtext("DISK_ID", ""), self.host(vm_id)
        tm, dst = disk.findtext("TM_MAD", ""), self._path(vm_id, disk_id)
        source = disk.findtext("SOURCE", "")
        verb = "CLONE" if disk.findtext("CLONE") == "YES" else "LN"
        self.run_line(shlex.join([verb, tm, source if ":" in source else f"{self.hostname}:{source}", dst,
                                  str(vm_id), disk.findtext("DATASTORE_ID", "")]))
        msg = self.message(vm_id)
        path = f"{self.system_dir(vm_id)}/disk.{disk_id}"
        self.vmm_action("attach_disk", self.deploy_id(vm_id), path, disk.findtext("TARGET", ""), disk_id,
                        base64.b64encode(msg).decode(), str(vm_id), host, stdin=msg)
        disk.remove(disk.find("ATTACH"))  # type: ignore[arg-type]

    def attach_nic(self, vm_id: int, nic: etree._Element) -> None:
        """ATTACHNIC: the NIC joins the template with ATTACH=YES, then ``attach_nic <deploy_id>
        <mac> <bridge> <model> <vn_mad> <target> <vmid> <host>`` (the message on stdin)."""
        tpl = self.vm(vm_id).find("TEMPLATE")
        assert tpl is not None
        nics = tpl.findall("NIC")
        (nics[-1].addnext if nics else tpl.append)(nic)
        etree.SubElement(nic, "ATTACH").text = "YES"
        self.vmm_action("attach_nic", self.deploy_id(vm_id), nic.findtext("MAC", ""), nic.findtext("BRIDGE", "-"),
                        nic.findtext("MODEL", "-"), nic.findtext("VN_MAD", "-"), nic.findtext("TARGET", ""),
                        str(vm_id), self.host(vm_id), stdin=self.message(vm_id))
        nic.remove(nic.find("ATTACH"))  # type: ignore[arg-type]

    def _destroy(self, vm_id: int) -> None:
        """oned's cancel: ``virsh destroy`` on the host (a missing domain is fine)."""
        self.cloud.ssh(self.host(vm_id), "virsh", "--connect", "qemu:///system", "destroy", self.deploy_id(vm_id))

    def poweroff(self, vm_id: int) -> None:
        self._destroy(vm_id)
        self._set(vm_id, "STATE", VM_POWEROFF)
        self._set(vm_id, "LCM_STATE", 0)

    def resume(self, vm_id: int) -> str:
        """``onevm resume``: from POWEROFF, DEPLOY again with the disks in place; from
        SUSPENDED, RESTORE (``restore``); from STOPPED, ``resume_stopped``. Returns DEPLOY_ID."""
        state = self.vm(vm_id).findtext("STATE")
        if state == str(VM_SUSPENDED):
            self.restore(vm_id)
            return self.deploy_id(vm_id)
        if state == str(VM_STOPPED):
            self.resume_stopped(vm_id)
            return self.deploy_id(vm_id)
        return self.deploy(vm_id, prolog=False)

    def terminate(self, vm_id: int) -> Path:
        """terminate --hard: cancel, then the EPILOG lines."""
        self._destroy(vm_id)
        path = self.transfer(vm_id, "epilog", self.epilog_lines(vm_id))
        self._set(vm_id, "STATE", 6)  # DONE
        self._set(vm_id, "LCM_STATE", 0)
        return path

    def disk_snapshot(self, vm_id: int, disk: int, snap: int) -> str:
        """DISKSNAPSHOTCREATE: SNAP_CREATE_LIVE when running (via the VMM), else SNAP_CREATE."""
        el = self.vm(vm_id).find(f"TEMPLATE/DISK[DISK_ID='{disk}']")
        assert el is not None, f"VM {vm_id} has no disk {disk}"
        running = self.vm(vm_id).findtext("LCM_STATE") == str(oned_sim.LCM_RUNNING)
        verb = "SNAP_CREATE_LIVE" if running else "SNAP_CREATE"
        return self.run_line(shlex.join([verb, el.findtext("TM_MAD", ""), self._path(vm_id, disk), str(snap),
                                         str(vm_id), el.findtext("DATASTORE_ID", "")]))

    def vm_snapshot(self, vm_id: int) -> tuple[int, str]:
        """SNAPSHOTCREATE (``-l snapshotcreate=snapshot_create-tweaks``): the next snapshot id;
        the printed HYPERVISOR_ID is recorded in the VM's TEMPLATE/SNAPSHOT."""
        vm = self.vm(vm_id)
        tpl = vm.find("TEMPLATE")
        assert tpl is not None
        snap_id = max((int(s.findtext("SNAPSHOT_ID", "0")) + 1 for s in tpl.iterfind("SNAPSHOT")), default=0)
        hid = self.vmm_action("snapshotcreate", self.deploy_id(vm_id), str(snap_id), str(vm_id), self.host(vm_id),
                              stdin=self.message(vm_id)).strip()
        snap = etree.SubElement(tpl, "SNAPSHOT")
        for key, value in (("ACTIVE", "YES"), ("HYPERVISOR_ID", hid), ("NAME", f"snapshot-{snap_id}"),
                           ("SNAPSHOT_ID", str(snap_id)), ("TIME", vm.findtext("STIME", "0"))):
            etree.SubElement(snap, key).text = value
        return snap_id, hid

    def _hid(self, vm_id: int, snap_id: int) -> str:
        hid = self.vm(vm_id).findtext(f"TEMPLATE/SNAPSHOT[SNAPSHOT_ID='{snap_id}']/HYPERVISOR_ID")
        assert hid, f"VM {vm_id} has no snapshot {snap_id}"
        return hid

    def vm_snapshot_revert(self, vm_id: int, snap_id: int) -> str:
        """SNAPSHOTREVERT: ``snapshot_revert <deploy_id> <HYPERVISOR_ID> <vmid> <host>``."""
        return self.vmm_action("snapshotrevert", self.deploy_id(vm_id), self._hid(vm_id, snap_id), str(vm_id),
                               self.host(vm_id), stdin=self.message(vm_id))

    def vm_snapshot_delete(self, vm_id: int, snap_id: int) -> str:
        out = self.vmm_action("snapshotdelete", self.deploy_id(vm_id), self._hid(vm_id, snap_id), str(vm_id),
                              self.host(vm_id), stdin=self.message(vm_id))
        tpl = self.vm(vm_id).find("TEMPLATE")
        assert tpl is not None
        for snap in tpl.findall(f"SNAPSHOT[SNAPSHOT_ID='{snap_id}']"):
            tpl.remove(snap)
        return out

    # ==============================================================================================
    # Storage lifecycle (tests/test_lifecycle_storage.py): image import/delete through the DS
    # driver, SAVE/RESTORE (suspend, stop) through the checkpoint overrides, disk-saveas, backup.
    # ==============================================================================================

    def local_script(self, key: str) -> str:
        """The script oned.conf's kvm VM_MAD ``-l`` list names for ``key``: installed, what the
        front-end's oned.conf says (an action not listed is remote: DriverFailed); else the
        name ``one-tweaks install`` gives it (``save`` -> ``save-tweaks``). The seed aliases
        (``tmsave``, ...) are passed as ``script=`` instead."""
        if self.installed is not None:
            return self.installed.vmm_script(key).name
        return {k: script for k, _, script in VMM_OVERRIDES}[key]

    def run_ds(self, action: str, image: etree._Element, obj_id: int, ds_id: int) -> str:
        """``datastore/<DS_MAD>/<action> <id>`` as one_datastore.rb runs it since 6.8 (6.10 and
        7.x alike): the base64 ``<DS_DRIVER_ACTION_DATA>`` (IMAGE, DATASTORE) on stdin, no newline."""
        ds_mad = self.cloud.oned.datastore(ds_id).findtext("DS_MAD", "")
        payload = etree.tostring(self.cloud.ds_message(image, ds_id))
        return self.execute(self.scripts_dir() / "datastore" / ds_mad / action, [str(obj_id)],
                            base64.b64encode(payload), f"datastore/{ds_mad}/{action} {obj_id}", timeout=300)

    def _image_field(self, image_id: int, tag: str, value: object) -> None:
        el = self.cloud.oned.image(image_id).find(tag)
        assert el is not None, tag
        el.text = str(value)

    def image_import(self, image_id: int, path: str | Path, *, ds_id: int = 100, name: str | None = None,
                     persistent: bool = False) -> str:
        """``oneimage create --path``: oned's DS ``stat`` (the IMAGE holds only PATH and SIZE;
        the id is a request id, here the image id) for the size, the image registered LOCKED,
        DS ``cp`` (stdout ``SOURCE FORMAT``), then READY with that SOURCE, FORMAT and SIZE.
        Returns the SOURCE."""
        stat = etree.Element("IMAGE")
        etree.SubElement(stat, "PATH").text = str(path)
        etree.SubElement(stat, "SIZE").text = ""
        size_mb = int(self.run_ds("stat", stat, image_id, ds_id).strip())
        self.cloud.make_image(image_id, size_mb=size_mb, source="", state=oned_sim.IMAGE_LOCKED, ds_id=ds_id,
                              name=name or Path(path).name, persistent=persistent)
        self._image_field(image_id, "PATH", path)
        source, fmt = self.run_ds("cp", self.cloud.oned.served("image", image_id), image_id, ds_id).split()
        for tag, value in (("SOURCE", source), ("FORMAT", fmt), ("STATE", oned_sim.IMAGE_READY)):
            self._image_field(image_id, tag, value)
        return source

    def image_delete(self, image_id: int) -> None:
        """``oneimage delete``: oned refuses an image that VMs still use (IMAGE/VMS, which
        counts every VM not DONE; a VM's trash is the driver's business, not oned's), raising
        ``Refused`` without calling anything; else DS ``rm`` and the image is gone from oned."""
        served = self.cloud.oned.served("image", image_id)
        users = [el.text for el in served.iterfind("VMS/ID")]
        if users:
            raise Refused(f"image {image_id} is in use by VMs {', '.join(str(u) for u in users)}")
        ds_id = int(served.findtext("DATASTORE_ID", "0"))
        self.run_ds("rm", served, image_id, ds_id)
        self.cloud.oned.remove_image(image_id)

    # --- SAVE / RESTORE (suspend, stop) ---------------------------------------------------------

    def checkpoint_file(self, vm_id: int) -> str:
        """``<system_dir>/checkpoint`` on the VM's current host (History.cc)."""
        return f"{self.system_dir(vm_id)}/checkpoint"

    def _checkpoint_message(self, vm_id: int, tm_command: str = "") -> bytes:
        """VMM_DRIVER_ACTION_DATA of SAVE/RESTORE (vmm-save.xml's fields and order)."""
        return self.message(vm_id, LOCAL_DEPLOYMENT_FILE="", REMOTE_DEPLOYMENT_FILE="",
                            CHECKPOINT_FILE=self.checkpoint_file(vm_id), TM_COMMAND=tm_command,
                            TM_COMMAND_ROLLBACK="", DISK_TARGET_PATH="")

    def save(self, vm_id: int, *, script: str | None = None, lcm_state: int = LCM_SAVE_SUSPEND) -> str:
        """SAVE: the local override (default ``save-tweaks``; ``script="tmsave"`` for the seed
        alias) with ``<deploy_id> <checkpoint_file> <host> <vmid> <host>`` and the base64
        driver message; the VM document says LCM ``lcm_state`` meanwhile."""
        self._set(vm_id, "LCM_STATE", lcm_state)
        host = self.host(vm_id)
        return self.vmm(script or self.local_script("save"), self.deploy_id(vm_id), self.checkpoint_file(vm_id),
                        host, str(vm_id), host, stdin=self._checkpoint_message(vm_id))

    def restore(self, vm_id: int, *, script: str | None = None, lcm_state: int = LCM_BOOT_SUSPENDED) -> str:
        """RESTORE: the context line (TM_COMMAND), then the local override (default
        ``restore-tweaks``) with ``<checkpoint_file> <host> <deploy_id> <vmid> <host>`` and the
        message carrying that TM_COMMAND; RUNNING afterwards (DEPLOY_ID unchanged)."""
        self._set(vm_id, "LCM_STATE", lcm_state)
        ctx = self.context_line(vm_id)
        if ctx is not None:
            self.run_line(ctx)
        host = self.host(vm_id)
        out = self.vmm(script or self.local_script("restore"), self.checkpoint_file(vm_id), host,
                       self.deploy_id(vm_id), str(vm_id), host,
                       stdin=self._checkpoint_message(vm_id, f"{ctx}\n" if ctx else ""))
        self._set(vm_id, "STATE", oned_sim.VM_ACTIVE)
        self._set(vm_id, "LCM_STATE", oned_sim.LCM_RUNNING)
        return out

    def suspend(self, vm_id: int, *, script: str | None = None) -> None:
        """``onevm suspend``: SAVE (LCM SAVE_SUSPEND), then SUSPENDED; disks stay on the host."""
        self.save(vm_id, script=script, lcm_state=LCM_SAVE_SUSPEND)
        self._set(vm_id, "STATE", VM_SUSPENDED)
        self._set(vm_id, "LCM_STATE", 0)

    def move_lines(self, vm_id: int, src: str, dst: str) -> list[str]:
        """The MV lines of epilog_stop / prolog_resume (TransferManager.cc): one per disk (a
        volatile disk with the system TM_MAD and datastore), then the VM directory."""
        vid, sysds, tm_sys = str(vm_id), self.system_ds(vm_id), self.tm_system(vm_id)

        def at(host: str, disk: str | None = None) -> str:
            return self.cloud.tm_path(host, vm_id, None if disk is None else int(disk), ds_id=sysds)  # type: ignore[no-any-return]

        lines = []
        for disk in self.vm(vm_id).iterfind("TEMPLATE/DISK"):
            disk_id = disk.findtext("DISK_ID", "")
            if disk.findtext("TYPE", "").lower() in ("fs", "swap"):
                tm, ds = tm_sys, str(sysds)
            else:
                tm, ds = disk.findtext("TM_MAD", ""), disk.findtext("DATASTORE_ID", "")
            lines.append(shlex.join(["MV", tm, at(src, disk_id), at(dst, disk_id), vid, ds]))
        lines.append(shlex.join(["MV", tm_sys, at(src), at(dst), vid, str(sysds)]))
        return lines

    def stop(self, vm_id: int, *, script: str | None = None) -> Path:
        """``onevm stop``: SAVE (LCM SAVE_STOP), then EPILOG_STOP: ``transfer.<seq>.stop`` with
        the MV lines host -> front-end; STOPPED. Returns the transfer file."""
        self.save(vm_id, script=script, lcm_state=LCM_SAVE_STOP)
        self._set(vm_id, "LCM_STATE", LCM_EPILOG_STOP)
        path = self.transfer(vm_id, "stop", self.move_lines(vm_id, self.host(vm_id), self.hostname))
        self._set(vm_id, "STATE", VM_STOPPED)
        self._set(vm_id, "LCM_STATE", 0)
        return path

    def resume_stopped(self, vm_id: int, *, host: str | None = None, script: str | None = None) -> Path:
        """``onevm resume`` of a STOPPED VM: a new history record (on ``host``, default the
        last one), PROLOG_RESUME: ``transfer.<seq>.resume`` with the MV lines front-end ->
        host, then RESTORE (LCM BOOT_STOPPED). Returns the transfer file."""
        self.add_history(vm_id, host or self.host(vm_id))
        self._set(vm_id, "STATE", oned_sim.VM_ACTIVE)
        self._set(vm_id, "LCM_STATE", LCM_PROLOG_RESUME)
        path = self.transfer(vm_id, "resume", self.move_lines(vm_id, self.hostname, self.host(vm_id)))
        self.restore(vm_id, script=script, lcm_state=LCM_BOOT_STOPPED)
        return path

    # --- disk-saveas, backup ---------------------------------------------------------------------

    def disk_saveas(self, vm_id: int, disk_id: int, image_id: int, *, snap_id: int = -1,
                    name: str | None = None) -> str:
        """``onevm disk-saveas``: the new image registered LOCKED in the disk's datastore with
        the disk's SIZE, DS ``mkfs`` with FORMAT=save_as (stdout: the SOURCE), then
        ``transfer.<seq>.disk_saveas`` with ``CPDS <tm> host:.../disk.N <SOURCE> <snap_id>
        <vmid> <dsid>`` (LCM HOTPLUG_SAVEAS* meanwhile); READY (FORMAT raw). Returns the SOURCE."""
        disk = self.vm(vm_id).find(f"TEMPLATE/DISK[DISK_ID='{disk_id}']")
        assert disk is not None, f"VM {vm_id} has no disk {disk_id}"
        ds_id = int(disk.findtext("DATASTORE_ID", "0"))
        self.cloud.make_image(image_id, size_mb=int(disk.findtext("SIZE", "0")), source="", ds_id=ds_id,
                              state=oned_sim.IMAGE_LOCKED, fmt="save_as", name=name or f"saveas-{vm_id}-{disk_id}",
                              template={"SAVED_VM_ID": vm_id, "SAVED_DISK_ID": disk_id,
                                        "SAVED_IMAGE_ID": disk.findtext("IMAGE_ID", "-1")})
        source = self.run_ds("mkfs", self.cloud.oned.served("image", image_id), image_id, ds_id).strip()
        self._image_field(image_id, "SOURCE", source)
        state, lcm = self.vm(vm_id).findtext("STATE"), self.vm(vm_id).findtext("LCM_STATE", "0")
        self._set(vm_id, "LCM_STATE", {str(VM_POWEROFF): 27, str(VM_SUSPENDED): 28}.get(state or "", 26))
        try:
            self.transfer(vm_id, "disk_saveas", [shlex.join(["CPDS", disk.findtext("TM_MAD", ""),
                                                             self._path(vm_id, disk_id), source, str(snap_id),
                                                             str(vm_id), str(ds_id)])])
        finally:
            self._set(vm_id, "LCM_STATE", lcm)
        for tag, value in (("FORMAT", "raw"), ("STATE", oned_sim.IMAGE_READY)):
            self._image_field(image_id, tag, value)
        return source

    def backup_disks(self, vm_id: int) -> list[str]:
        """The disks oned backs up: every DISK but volatile ones (BACKUP_VOLATILE=NO, the
        default); never the context CD-ROM."""
        return [d.findtext("DISK_ID", "") for d in self.vm(vm_id).iterfind("TEMPLATE/DISK")
                if d.findtext("TYPE", "").lower() not in ("fs", "swap")]

    def backup(self, vm_id: int, into: Path, *, job: str = "-") -> Path:
        """``onevm backup``: the VMM BACKUP action's TM steps (one_vmm_exec.rb): TM_COMMAND
        ``BACKUP <tm> host:system_dir <disk ids> <deploy_id> <bjid|-> <vmid> <sys ds>`` run as
        ``prebackup_live`` (RUNNING, LCM BACKUP) or ``prebackup`` (POWEROFF, LCM
        BACKUP_POWEROFF) with the plain ``<VM>`` on stdin (6.10 and 7.2 alike), then the backup
        datastore's ``backup`` action, then ``postbackup[_live]``. The backup datastore is a
        stand-in (no OpenNebula backup driver here): like rsync's ``backup`` it fetches
        ``system_dir/backup/*`` from the host (tar over the real ssh hop) into ``into``/<n>.
        Returns that directory."""
        running = self.vm(vm_id).findtext("STATE") == str(oned_sim.VM_ACTIVE)
        suffix, lcm = ("_live", LCM_BACKUP) if running else ("", LCM_BACKUP_POWEROFF)
        before = self.vm(vm_id).findtext("LCM_STATE", "0")
        self._set(vm_id, "LCM_STATE", lcm)
        host, tm = self.host(vm_id), self.tm_system(vm_id)
        argv = [self._path(vm_id), ":".join(self.backup_disks(vm_id)), self.deploy_id(vm_id), job, str(vm_id),
                str(self.system_ds(vm_id))]
        target = into / str(len(list(into.glob("*"))) if into.exists() else 0)
        try:
            self.run_tm_stdin(tm, f"prebackup{suffix}", argv,
                              etree.tostring(self.cloud.oned.served("vm", vm_id)))
            target.mkdir(parents=True)
            tar = self.cloud.ssh(host, "tar", "-C", f"{self.system_dir(vm_id)}/backup", "-cf", "-", ".",
                                 timeout=300)
            if tar.returncode != 0:
                raise DriverFailed(f"backup datastore stand-in: tar on {host}: {tar.stderr.decode(errors='replace')}")
            subprocess.run(["tar", "-C", str(target), "-xf", "-"], input=tar.stdout, check=True, timeout=300)
            self.run_tm_stdin(tm, f"postbackup{suffix}", argv,
                              etree.tostring(self.cloud.oned.served("vm", vm_id)))
        finally:
            self._set(vm_id, "LCM_STATE", before)
        return target


    # ==============================================================================================
    # Live machinery (tests/test_lifecycle_live.py): direct kernel boot in the rendered <os>, and
    # live migration with oned's history records. Keep other additions above this section.
    # ==============================================================================================

    def os_boot(self, vm_id: int) -> str:
        """The ``<os>`` children LibVirtDriverKVM.cc writes for OS/KERNEL (then OS/INITRD and
        OS/KERNEL_CMD, only with a kernel): direct kernel boot from paths on the host."""
        os_el = self.vm(vm_id).find("TEMPLATE/OS")
        kernel = os_el.findtext("KERNEL", "") if os_el is not None else ""
        if os_el is None or not kernel:
            return ""
        out = f"<kernel>{escape(kernel)}</kernel>"
        initrd, cmdline = os_el.findtext("INITRD", ""), os_el.findtext("KERNEL_CMD", "")
        if initrd:
            out += f"<initrd>{escape(initrd)}</initrd>"
        if cmdline:
            out += f"<cmdline>{escape(cmdline)}</cmdline>"
        return out

    def add_history(self, vm_id: int, host: str) -> etree._Element:
        """oned's new history record (VirtualMachine::add_history, cp_previous_history): the
        last record copied with SEQ + 1 on ``host``; the previous one gets its end time."""
        records = self.vm(vm_id).find("HISTORY_RECORDS")
        assert records is not None and len(records.findall("HISTORY")), f"VM {vm_id} has no history"
        last = records.findall("HISTORY")[-1]
        now = str(int(time.time()))
        last_etime = last.find("ETIME")
        if last_etime is not None:
            last_etime.text = now
        new = copy.deepcopy(last)
        host_id = self.cloud.hosts[host].host_id
        hid = -1 if host_id is None else host_id
        for tag, value in (("SEQ", self.seq(vm_id) + 1), ("HOSTNAME", host), ("HID", hid), ("STIME", now),
                           ("ETIME", 0), ("PSTIME", 0), ("PETIME", 0), ("RSTIME", now), ("RETIME", 0),
                           ("ESTIME", 0), ("EETIME", 0)):
            el = new.find(tag)
            if el is not None:
                el.text = str(value)
        records.append(new)
        return new

    def tm_system(self, vm_id: int) -> str:
        return self.vm(vm_id).findtext("HISTORY_RECORDS/HISTORY[last()]/TM_MAD", "")

    def run_tm_stdin(self, tm_mad: str, action: str, argv: list[str], stdin: bytes) -> str:
        """A TM action one_vmm_exec.rb runs itself (not from a transfer file), with its stdin."""
        return self.execute(self.tm_script(tm_mad, action), argv, stdin, f"tm/{tm_mad}/{action} {shlex.join(argv)}",
                            timeout=300)

    def migrate(self, vm_id: int, dst: str) -> None:
        """MIGRATE --live as oned runs it: a new history record for ``dst`` (LCM MIGRATE), tm
        ``premigrate <src> <dst> <system dir> <vmid> <sys ds>`` (stdin: base64 ``<VM>``), the
        ``migrate-tweaks <deploy_id> <dst> <src> <vmid> <src>`` override (HOST = source,
        MIGR_HOST = destination, DISK_TARGET_PATH, TM_COMMAND in the message), tm
        ``postmigrate``; RUNNING on ``dst``. A failed migrate runs tm ``failmigrate`` and a
        failed premigrate nothing more; either way the VM gets a record for the source again
        (oned's migrate failure: cp_previous_history) and keeps RUNNING there, and the failure
        is raised (DriverFailed). Unlike oned, which ignores a failed postmigrate, this raises."""
        src = self.host(vm_id)
        if dst == src:
            raise ValueError(f"VM {vm_id} is on {src} already")
        tm_mad, sysds, vid = self.tm_system(vm_id), str(self.system_ds(vm_id)), str(vm_id)
        self.add_history(vm_id, dst)
        self._set(vm_id, "LCM_STATE", 4)  # MIGRATE
        dst_dir = self.system_dir(vm_id)
        argv = [src, dst, dst_dir, vid, sysds]
        doc = base64.b64encode(etree.tostring(self.cloud.oned.served("vm", vm_id)))
        try:
            self.run_tm_stdin(tm_mad, "premigrate", argv, doc)
        except DriverFailed:
            self.add_history(vm_id, src)
            self._set(vm_id, "LCM_STATE", oned_sim.LCM_RUNNING)
            raise
        message = self.message(vm_id, HOST=src, MIGR_HOST=dst, DISK_TARGET_PATH=dst_dir,
                               TM_COMMAND=shlex.join(["MIGRATE", tm_mad, *argv]) + "\n")
        try:
            self.vmm_action("migrate", self.deploy_id(vm_id), dst, src, vid, src, stdin=message)
        except DriverFailed:
            self.run_tm_stdin(tm_mad, "failmigrate", argv, doc)
            self.add_history(vm_id, src)
            self._set(vm_id, "LCM_STATE", oned_sim.LCM_RUNNING)
            raise
        self.run_tm_stdin(tm_mad, "postmigrate", argv, doc)
        self._set(vm_id, "LCM_STATE", oned_sim.LCM_RUNNING)

    def resize_disk(self, vm_id: int, disk_id: int, size_mb: int) -> str:
        """RESIZEDISK: DISK/SIZE set, the TM ``RESIZE`` line, then (RUNNING only) the VMM step
        ``resize_disk <deploy_id> <disk_id> <size> <b64 message> <host> <vmid> <host>`` through
        the ``resize_disk-tweaks`` override (the message also on stdin)."""
        disk = self.vm(vm_id).find(f"TEMPLATE/DISK[DISK_ID='{disk_id}']")
        assert disk is not None, f"VM {vm_id} has no disk {disk_id}"
        size = disk.find("SIZE")
        assert size is not None
        size.text = etree.CDATA(str(size_mb))
        self.run_line(shlex.join(["RESIZE", disk.findtext("TM_MAD", ""), self._path(vm_id, disk_id), str(size_mb),
                                  str(vm_id), disk.findtext("DATASTORE_ID", "")]))
        if self.vm(vm_id).findtext("LCM_STATE") != str(oned_sim.LCM_RUNNING):
            return ""
        message = self.message(vm_id)
        host = self.host(vm_id)
        return self.vmm_action("resize_disk", self.deploy_id(vm_id), str(disk_id), str(size_mb),
                               base64.b64encode(message).decode(), host, str(vm_id), host, stdin=message)
