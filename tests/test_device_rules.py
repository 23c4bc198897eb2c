"""Rules on one device (tweaks/device.py): a disk or NIC shaped inside a running domain gets
exactly what it gets when the domain is deployed with it. (On real libvirtd through
attach_disk-tweaks / attach_nic-tweaks: test_hotplug_rules.py.)"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import DOMAIN_RNG, apply, deployment, vm_xml, write_rule
from lxml import etree

from tweaks import device, engine, loader, registry
from tweaks.errors import InputError
from tweaks.validate import DomainSchema

USER = {"T_IOTHREADS_OVERRIDE": "3", "T_BLK_QUEUES": "yes", "T_DISKSERIAL": "yes", "T_NIC_QUEUES": "2",
        "T_IOEVENTFD": "yes"}
DRIVER_RULE = ("name: disk-driver\ntweaks:\n  - disk_driver:\n      tm_mads: blk\n      cache: writeback\n"
               "      io: threads\n      discard: ignore\n")


def _without(data: bytes, tag: str, index: int) -> tuple[bytes, etree._Element]:
    """oned's domain without its ``index``-th ``tag`` device (a VM deployed before it was
    attached), and that device as oned wrote it."""
    root = etree.fromstring(data, etree.XMLParser(strip_cdata=False))
    el = root.findall(f"devices/{tag}")[index]
    el.getparent().remove(el)
    el.tail = None
    return etree.tostring(root), el


def _c14n(el: etree._Element) -> bytes:
    el = copy.deepcopy(el)
    for node in el.iter():
        node.tail = None if node is el else (node.tail or "").strip() or None
        if node.text is not None and not node.text.strip():
            node.text = None
    return etree.tostring(el, method="c14n")


@pytest.fixture
def rules_dir(tmp_path: Path) -> list[str]:
    write_rule(tmp_path / "r", "52-disk-driver.yaml", DRIVER_RULE)
    return [str(tmp_path / "r")]


@pytest.mark.parametrize(("tag", "index"), [("disk", 2), ("disk", 1), ("disk", 0), ("interface", 0)],
                         ids=["virtio-blk-vdb", "virtio-scsi-sda", "first-disk-vda", "nic"])
def test_a_device_shaped_in_the_running_domain_equals_the_deployed_one(rules_dir: list[str], tag: str,
                                                                      index: int) -> None:
    vm = vm_xml(USER)
    schema = DomainSchema(DOMAIN_RNG)
    full = apply(deployment(), vm, rules_dir, schema=schema)
    deployed = full.tree.getroot().findall(f"devices/{tag}")[index]

    partial, new = _without(deployment(), tag, index)
    running = apply(partial, vm, rules_dir, schema=schema).tree
    before = engine.serialize(running)
    rules = loader.load(rules_dir).rules
    shaped = device.apply_to_device(running, new, engine.parse_xml(vm, "vm"), rules, schema=schema)
    assert _c14n(shaped.device) == _c14n(deployed)
    assert engine.serialize(running) == before, "the running domain itself is left alone"
    assert shaped.rules, "rules changed the device"


def test_the_hot_plugged_disk_gets_the_iothread_round_robin_it_would_have_got(rules_dir: list[str]) -> None:
    vm = vm_xml({"T_IOTHREADS_OVERRIDE": "3"})
    partial, vdb = _without(deployment(), "disk", 2)
    running = apply(partial, vm, rules_dir).tree
    assert [d.find("driver").get("iothread") for d in running.getroot().iterfind("devices/disk")
            if d.find("target").get("dev").startswith("vd")] == ["1"]
    shaped = device.apply_to_device(running, vdb, engine.parse_xml(vm, "vm"), loader.load(rules_dir).rules)
    assert shaped.device.find("driver").get("iothread") == "2", "second virtio disk: iothread 2"
    assert shaped.device.find("driver").get("queues") is None, "no T_BLK_QUEUES: no queues"


def test_only_device_level_tweaks_and_hotplug_rules_run(tmp_path: Path) -> None:
    write_rule(tmp_path / "r", "90-title.yaml", "name: title\ntweaks:\n  - xpath_patch:\n"
               "      xpath: /domain/devices/disk/target\n      action: set-attribute\n      name: bus\n"
               "      value: usb\n")
    write_rule(tmp_path / "r", "91-deploy-only.yaml", "name: deploy-only\non: [deploy]\ntweaks:\n"
               "  - disk_serial:\n      mode: hashpath\n")
    write_rule(tmp_path / "r", "92-hotplug-only.yaml", "name: hotplug-only\non: [hotplug]\ntweaks:\n"
               "  - blk_queues:\n      queues: 2\n")
    rules = loader.load([str(tmp_path / "r")]).rules
    names = [r.name for r in device.device_rules(rules, "disk")]
    assert "title" not in names, "xpath_patch shapes the domain, not a device alone"
    assert "deploy-only" not in names, "a rule that lists its moments without hotplug stays out"
    assert "hotplug-only" in names and "iothreads" in names and "blk-queues" in names
    assert "nic-queues" not in names
    assert [r.name for r in device.device_rules(rules, "interface")] == ["nic-queues"]
    _, vdb = _without(deployment(), "disk", 2)
    shaped = device.apply_to_device(engine.parse_xml(deployment(), "d"), vdb,
                                    engine.parse_xml(vm_xml(), "vm"), rules)
    assert shaped.device.find("target").get("bus") == "virtio"
    assert shaped.device.find("serial") is None
    assert shaped.device.find("driver").get("queues") == "2"
    hotplug_at_deploy = apply(deployment(), vm_xml(), [str(tmp_path / "r")])
    assert all(d.find("driver").get("queues") is None
               for d in hotplug_at_deploy.tree.getroot().iterfind("devices/disk")), "hotplug rules not at deploy"


def test_an_iothread_the_running_domain_lacks_is_left_out(rules_dir: list[str]) -> None:
    partial, vdb = _without(deployment(), "disk", 2)
    root = etree.fromstring(partial)
    for el in [root.find("iothreads"), *root.iterfind("devices//driver[@iothread]")]:
        if el.tag == "iothreads":
            root.remove(el)
        else:
            del el.attrib["iothread"]
    for el in vdb.iterfind("driver"):
        del el.attrib["iothread"]
    warnings: list[str] = []
    shaped = device.apply_to_device(etree.ElementTree(root), vdb, engine.parse_xml(vm_xml(USER), "vm"),
                                    loader.load(rules_dir).rules, warn=warnings.append)
    assert shaped.device.find("driver").get("iothread") is None
    assert warnings == ["VM 42: iothread 2 is not in the running domain (0 iothreads); "
                        "the device is attached without one"]


def test_fragment_capability_is_declared_by_the_device_tweaks() -> None:
    capable = {t.name: t.fragments for t in registry.all_tweaks() if t.fragments}
    assert capable == {
        "blk_queues": ("disk",), "context_block": ("disk",), "context_cache": ("disk",), "disk_driver": ("disk",),
        "disk_serial": ("disk",), "ioeventfd": ("disk", "controller"), "iothreads": ("disk", "controller"),
        "nic_queues": ("interface",), "scsi_queues": ("controller",), "volatile_block": ("disk",),
        "volatile_network": ("disk",), "context_network": ("disk",)}


def test_only_disks_and_interfaces() -> None:
    with pytest.raises(InputError, match="not <video>"):
        device.apply_to_device(engine.parse_xml(deployment(), "d"), etree.Element("video"), None, [])


def test_list_says_which_tweaks_shape_a_hot_plugged_device() -> None:
    from conftest import run_cli

    out = run_cli("list").stdout.decode()
    block = out.split("nic_queues:", 1)[1].split("\n", 3)
    assert "    shapes a hot-plugged device alone: interface" in block
    assert "cpu_model:" in out and "shapes a hot-plugged device alone" not in out.split("cpu_model:", 1)[1].split(
        "\n", 2)[1]
