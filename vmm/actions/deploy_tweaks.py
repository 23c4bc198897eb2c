"""``deploy-tweaks``: the local deploy override (``VM_MAD ... -l deploy=deploy-tweaks``).

oned calls it on the front-end with the remote deploy's argv (local deployment file,
host, VM id, host) and the base64 domain XML on stdin. It reads the VM document from
oned, applies the tweak rules in-process, keeps the result next to oned's file as
``deployment.N-tweaks`` (addon-storpool's name), writes ``vm.xml``/``ds.xml``, oned's own
domain XML as ``deployment.N.oned`` (the input ``one-tweaks drift`` re-applies today's rules
to) and the deployment file into the VM's directory on the host (oned's local deploy skips that),
runs the stock remote ``vmm/kvm/deploy`` there and prints the domain UUID: all in one ssh
round trip (a fixed script; the files travel as a tar stream on its stdin).

A broken rule never blocks a deploy: the engine rolls it back, and what it skipped goes
to the VM log as ``INFO: <vmid> ...`` lines (OpenNebula 7) and to syslog.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
import time

from lxml import etree

from onelib import log, numbers, xmldoc
from onelib.config import Config
from onelib.errors import DriverError
from onelib.hypervisor import ds_location, remote_script, shell
from onelib.oned import Oned
from onelib.paths import check_host, clean_path

from ..entry import VmmRequest

# $1 VM directory, $2 remote deploy script, $3-$6 its argv, $7 the staged domain XML (from
# the tar stream), which the stock script reads on stdin and writes to $3 itself.
_REMOTE = ('mkdir -p -- "$1" && cd -- "$1" && tar -x -o -f - && '
           '{ "$2" "$3" "$4" "$5" "$6" < "$7"; rc=$?; rm -f -- "$7"; exit $rc; }')


def run(req: VmmRequest) -> str:
    local_file = clean_path(req.arg(0, "deployment file"), "deployment file")
    host = check_host(req.arg(1, "host"))
    vm_id = numbers.object_id(req.arg(2, "vm id"), "VM id")
    config = Config.load()
    domain_xml = _domain_xml(req, local_file)
    oned = Oned(timeout=float(config.integer("API_TIMEOUT") or 30))
    vm = oned.vm(vm_id)
    history = vm.findall("HISTORY_RECORDS/HISTORY")
    if not history:
        raise DriverError(f"VM {vm_id} has no history record: no system datastore to deploy into")
    ds_id = xmldoc.integer(history[-1], "DS_ID", "VM history")
    datastore = oned.datastore(ds_id)
    tweaked = tweak(domain_xml, vm, vm_id, config, datastore)
    _write_local(local_file + "-tweaks", tweaked)

    vm_dir = posixpath.join(ds_location(oned, host, config), str(ds_id), str(vm_id))
    remote_file = posixpath.join(vm_dir, posixpath.basename(local_file))
    deploy = remote_script(config, "vmm", "kvm", "deploy")
    staged = f".{posixpath.basename(local_file)}.{os.getpid()}.in"
    files = _tar({"vm.xml": etree.tostring(vm), "ds.xml": etree.tostring(datastore),
                  f"{posixpath.basename(local_file)}.oned": domain_xml, staged: tweaked})
    argv = ["sh", "-c", _REMOTE, "sh", vm_dir, deploy, remote_file, host, str(vm_id), host, staged]
    proc = shell(config, host).run(argv, input=files, what="deploy")
    out = proc.stdout.decode(errors="replace").split()
    if not out:
        raise DriverError(f"deploy on {host} printed no domain id")
    return out[0]


def tweak(domain_xml: bytes, vm: etree._Element, vm_id: int, config: Config,
          datastore: etree._Element | None = None) -> bytes:
    """The rules applied to oned's domain XML (warnings to the VM log and syslog), with the
    storage side's facts (``datastore.facts``: which TM_MADs are block devices, the system
    datastore's attributes) supplied."""
    from datastore.facts import storage_facts
    from tweaks import engine, loader, provenance
    from tweaks.errors import TweakError
    from tweaks.validate import DomainSchema

    schema = DomainSchema()
    extra = config.get("TWEAKS_RULES_DIRS").split()
    try:
        domain = engine.parse_xml(domain_xml, "domain XML")
        ruleset = loader.load(extra)
        outcome = engine.apply_rules(domain, etree.ElementTree(vm), ruleset.rules, schema=schema,
                                     supplied=storage_facts(vm, datastore, config))
        provenance.stamp(outcome.tree.getroot(), outcome.report, ruleset.hashes)
    except TweakError as exc:
        # A broken rule set or unreadable input must not block the deploy: deploy untouched.
        log.vm_log(vm_id, f"deploy-tweaks: tweaks not applied: {exc}", severity="ERROR")
        return domain_xml
    for warning in outcome.report.warnings:
        log.vm_log(vm_id, f"deploy-tweaks: {warning}")
    applied = [r.name for r in outcome.report.results if r.status == "applied"]
    if applied:
        log.info(f"VM {vm_id}: rules applied: {', '.join(applied)}")
    return engine.serialize(outcome.tree)


def _domain_xml(req: VmmRequest, local_file: str) -> bytes:
    if req.stdin.strip():
        return req.decoded_stdin("domain XML on stdin")
    try:
        with open(local_file, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise DriverError(f"{local_file}: cannot read the deployment file: {exc.strerror}") from None


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:  # PAX: names of any length
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write_local(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.error(f"cannot keep the tweaked copy {path}: {exc.strerror}")
