"""A test double of the OpenNebula front-end (NOT oned, NOT OpenNebula's drivers).

Built on the ``cloud`` harness (tests/storage_env.py): for a VM document registered in the
oned double (``cloud.oned``) it does what oned and its drivers do around our scripts:

- renders the deployment file the way oned's LibVirtDriverKVM.cc does (6.10 layout of
  tests/fixtures/opennebula/deployment.0.xml; ``version="7.2"``: no second ``<devices>``
  block, disk ``<serial>``), adapted to this machine: emulator /usr/bin/qemu-system-x86_64,
  no bridge NIC, VNC on 127.0.0.1, the nested-KVM CPU element (TCG when there is no KVM);
- writes ``/var/lib/one/vms/<vid>/transfer.<seq>.prolog|epilog`` with the lines of
  tests/fixtures/opennebula/transfer-examples.txt and runs each as one_tm.rb does (first word
  lowercased = script ``REPO/tm/<tm_mad>/<name>``, the rest its argv);
- calls the VMM local overrides with oned's argv and the base64 driver message on stdin
  (deploy-tweaks: ``<local deployment file> <host> <vmid> <host>``, the domain XML), with a
  stand-in of the remote ``vmm/kvm/deploy`` (stores the file, ``virsh create``, prints UUID).
"""

from __future__ import annotations

import base64
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from lxml import etree

from . import oned as oned_sim

QEMU = "/usr/bin/qemu-system-x86_64"
VM_POWEROFF = 8
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
    pass


def _ok(proc: subprocess.CompletedProcess[bytes], what: str) -> str:
    if proc.returncode != 0:
        raise DriverFailed(f"{what}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


class Frontend:
    """oned's side of a VM's life on ``cloud`` (see the module doc)."""

    def __init__(self, cloud: Any, *, version: str = "6.10", paused: bool = True, hostname: str = "one-fe",
                 kvm: bool | None = None) -> None:
        if version not in ("6.10", "7.2"):
            raise ValueError(f"version {version!r}: 6.10 or 7.2")
        self.cloud, self.version, self.hostname = cloud, version, hostname
        self.kvm = Path("/dev/kvm").exists() if kvm is None else kvm
        self.repo = Path(__file__).resolve().parent.parent.parent
        self.transfers: list[Path] = []
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
               f"\t<os><type arch='x86_64' machine='{machine}'>hvm</type></os>"]
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
        script = self.repo / "tm" / tm_mad / name
        if not script.exists() and "." in name:  # CLONE.ssh -> clone.ssh, else clone
            script = self.repo / "tm" / tm_mad / name.split(".", 1)[0]
        proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, env=self.cloud.env,
                              cwd=self.cloud.home, timeout=180, check=False)
        return _ok(proc, line)

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
        """A local override ``vmm/kvm/<script>``: oned's argv, base64 stdin."""
        proc = subprocess.run([sys.executable, str(self.repo / "vmm" / "kvm" / script), *argv],
                              input=base64.b64encode(stdin), capture_output=True, env=self.cloud.env,
                              cwd=self.cloud.home, timeout=180, check=False)
        return _ok(proc, f"vmm/kvm/{script} {shlex.join(argv)}")

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
        uuid = self.vmm("deploy-tweaks", str(local), host, str(vm_id), host, stdin=domain).split()[0]
        self._set(vm_id, "DEPLOY_ID", uuid)
        self._set(vm_id, "STATE", oned_sim.VM_ACTIVE)
        self._set(vm_id, "LCM_STATE", oned_sim.LCM_RUNNING)
        return uuid

    def _destroy(self, vm_id: int) -> None:
        """oned's cancel: ``virsh destroy`` on the host (a missing domain is fine)."""
        self.cloud.ssh(self.host(vm_id), "virsh", "--connect", "qemu:///system", "destroy", self.deploy_id(vm_id))

    def poweroff(self, vm_id: int) -> None:
        self._destroy(vm_id)
        self._set(vm_id, "STATE", VM_POWEROFF)
        self._set(vm_id, "LCM_STATE", 0)

    def resume(self, vm_id: int) -> str:
        """Resume from POWEROFF: DEPLOY again with the disks in place."""
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
        hid = self.vmm("snapshot_create-tweaks", self.deploy_id(vm_id), str(snap_id), str(vm_id), self.host(vm_id),
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
        return self.vmm("snapshot_revert-tweaks", self.deploy_id(vm_id), self._hid(vm_id, snap_id), str(vm_id),
                        self.host(vm_id), stdin=self.message(vm_id))

    def vm_snapshot_delete(self, vm_id: int, snap_id: int) -> str:
        out = self.vmm("snapshot_delete-tweaks", self.deploy_id(vm_id), self._hid(vm_id, snap_id), str(vm_id),
                       self.host(vm_id), stdin=self.message(vm_id))
        tpl = self.vm(vm_id).find("TEMPLATE")
        assert tpl is not None
        for snap in tpl.findall(f"SNAPSHOT[SNAPSHOT_ID='{snap_id}']"):
            tpl.remove(snap)
        return out
