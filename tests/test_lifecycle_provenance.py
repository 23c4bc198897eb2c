"""Provenance through a VM's life on real libvirtd (the front-end double tests/sim/frontend.py,
StorPool simulator, real sshd): the stamp deploy-tweaks writes is in the running domain after
deploy, after save/restore (suspend, resume) and after a live migration to the second libvirt
host of test_vmm_migrate; restore-tweaks checks the saved domain against the rules of now and
says, in one VM-log line, which rules differ (never a failure).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from livevm import dumpxml, libvirtd, virsh
from lxml import etree
from sim.frontend import Frontend
from storage_env import Cloud, cloud, sshd
from test_vmm_migrate import SecondHost, hosts, second_host

from tweaks import __version__, provenance

# VM ids (so domain names) of this session: concurrent pytest sessions share one libvirtd
BASE_ID = 100000 + os.getpid() % 100000 * 8
FIXTURES = (cloud, sshd, libvirtd, second_host, hosts)
pytestmark = [pytest.mark.libvirtd, pytest.mark.usefixtures("libvirtd")]

USER = {"T_IOTHREADS_OVERRIDE": "1", "T_DISKSERIAL": "yes"}
DRIVER_RULE = """name: disk-driver
tweaks:
  - disk_driver:
      tm_mads: storpool
      cache: {cache}
      io: threads
"""


def _vm(cloud: Cloud, vm_id: int, image: int) -> None:
    cloud.make_volume(f"one-img-{image}", 16, data=b"provenance" * 100)
    cloud.make_image(image, size_mb=16)
    vm = cloud.make_vm(vm_id, disks=[{"image": image, "size": 16}], context=False, user=USER,
                       template={"MEMORY": 128, "VCPU": 1})
    for el in vm.findall("TEMPLATE/GRAPHICS"):
        el.getparent().remove(el)  # type: ignore[union-attr]


def _stamp(host_xml: etree._Element) -> provenance.Provenance:
    found = provenance.read(host_xml)
    assert found is not None, "the running domain carries the provenance stamp"
    assert found.version == __version__
    return found


def _vm_log(fe: Frontend, what: str) -> list[str]:
    (err,) = [e for w, e in fe.stderr if w.startswith(what)][-1:]
    return [line for line in err.decode().splitlines() if line.startswith(("INFO:", "ERROR:"))]


def test_stamp_after_deploy_and_save_restore_and_restore_checks_the_rules(cloud: Cloud, tmp_path: Path) -> None:
    vm_id = BASE_ID + 0
    name = f"one-{vm_id}"
    rules = tmp_path / "site-rules"
    rules.mkdir()
    rule = rules / "52-disk-driver.yaml"
    rule.write_text(DRIVER_RULE.format(cache="writeback"))
    cloud.configure(TWEAKS_RULES_DIRS=str(rules))
    _vm(cloud, vm_id, 95)
    fe = Frontend(cloud)
    try:
        fe.deploy(vm_id)
        deployed = _stamp(dumpxml(name))
        assert deployed.changed_by() == {"iothreads": ["iothreads"], "disk-serial": ["disk_serial"],
                                         "disk-driver": ["disk_driver"]}
        assert deployed.files()["52-disk-driver.yaml"] == provenance_hash(rule)

        fe.suspend(vm_id)
        assert virsh("domstate", name, check=False).returncode != 0, "saved: the domain is gone"
        fe.restore(vm_id)
        assert _stamp(dumpxml(name)) == deployed, "libvirt kept the stamp through save/restore"
        assert not [line for line in _vm_log(fe, "vmm/kvm/restore") if "differs" in line], \
            "the saved domain satisfies the rules: no warning"

        rule.write_text(DRIVER_RULE.format(cache="unsafe"))  # the operator changes a rule file
        fe.suspend(vm_id)
        fe.restore(vm_id)
        lines = _vm_log(fe, "vmm/kvm/restore")
        assert lines == [f"INFO: {vm_id} restore-tweaks: warning: the saved domain differs from the rules now: "
                         "disk-driver (/domain/devices/disk/driver/@cache) (restored as saved; a fresh deploy "
                         "would apply them)"], lines
        live = dumpxml(name)
        assert live.find("devices/disk/driver").get("cache") == "writeback", "restored as it was saved"
        assert _stamp(live) == deployed
    finally:
        virsh("destroy", name, check=False, timeout=120)


def provenance_hash(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_stamp_survives_a_live_migration(cloud: Cloud, hosts: SecondHost) -> None:
    vm_id = BASE_ID + 1
    name = f"one-{vm_id}"
    cloud.sshd = dataclasses.replace(cloud.sshd, ssh_config=hosts.ssh_config)
    _vm(cloud, vm_id, 96)
    fe = Frontend(cloud, paused=False)
    try:
        fe.deploy(vm_id)
        before = _stamp(dumpxml(name))
        assert before.changed_by()["iothreads"] == ["iothreads"]
        fe.migrate(vm_id, "node2")
        assert hosts.state(name) == "running"
        on_node2 = etree.fromstring(hosts.virsh("dumpxml", name).stdout.encode())
        assert _stamp(on_node2) == before, "node2's libvirt has the same stamp"
    finally:
        hosts.virsh("destroy", name, check=False)
        virsh("destroy", name, check=False, timeout=120)
