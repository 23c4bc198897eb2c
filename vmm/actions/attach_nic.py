"""``attach_nic <deploy_id> <mac> <bridge> <model> <vn_mad> <target> <vmid> <host>`` (local:
``-l attach_nic=attach_nic-tweaks``; the base64 driver message on stdin). oned has run the
network driver's ``pre`` step; its ``post`` step and the context update follow.

The NIC oned marked ATTACH=YES is built as OpenNebula's remote ``attach_nic`` builds it
(type bridge with its source bridge, openvswitch virtualport, or type ethernet; MAC, script,
target, boot order, model (MODEL, else DEFAULT_ATTACH_NIC_MODEL of the configuration),
virtio queues, the clean-traffic style filter with the NIC's IPs, bandwidth), then the rule
files shape it inside the running domain as they would have at deploy (T_NIC_QUEUES ...),
and libvirt's attach-device (``--live``, through ``onelib.hypervisor``) plugs it in on the host.

A PCI device or a NIC alias is left to OpenNebula's own remote ``attach_nic`` (same argv, the
plain message on stdin). Re-runnable: a NIC already attached with the same MAC is done.
"""

from __future__ import annotations

import re

from lxml import etree

from onelib import log, numbers, xmldoc
from onelib.config import Config
from onelib.errors import DriverError
from onelib.hypervisor import Hypervisor, forward

from .. import domain_ops as ops
from .. import hotplug
from ..entry import VmmRequest

_MAC = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")
_NAME = re.compile(r"[A-Za-z0-9_.:@+-]{1,64}")  # bridge, target device, model, filter names
_PATH = re.compile(r"/[A-Za-z0-9_./+-]{1,255}")
_IP = re.compile(r"[0-9a-fA-F:.]{2,45}")
BANDWIDTH = (("inbound", "INBOUND"), ("outbound", "OUTBOUND"))


def run(req: VmmRequest) -> str:
    deploy_id = ops.deploy_id(req.arg(0, "deploy id"))
    mac = _mac(req.arg(1, "MAC"))
    vm_id = ops.vm_id(req.arg(6, "vm id"))
    host = ops.host(req.arg(7, "host"))
    msg = ops.parse_message(req.stdin, "driver message")
    vm = ops.message_vm(msg, vm_id)
    config = Config.load()
    nics = [n for n in vm.iterfind("TEMPLATE/NIC") if xmldoc.text(n, "ATTACH").upper() == "YES"]
    if not nics:
        log.info(f"VM {vm_id}: no NIC with ATTACH=YES (a PCI device or NIC alias): OpenNebula's attach_nic")
        return forward(config, host, "attach_nic", list(req.args), etree.tostring(msg)).strip()
    if len(nics) != 1:
        raise DriverError(f"the driver message has {len(nics)} NICs with ATTACH=YES, not one")
    nic = nics[0]
    if xmldoc.text(nic, "MAC").lower() != mac.lower():
        raise DriverError(f"the attached NIC has MAC {xmldoc.text(nic, 'MAC')!r}, not {mac}")
    el = interface_element(nic, config, xmldoc.text(vm, "TEMPLATE/VCPU") or "1")
    dom = Hypervisor(config, host).domain(deploy_id)
    live = dom.xml()
    for present in live.iterfind("devices/interface"):
        found = present.find("mac")
        if found is not None and found.get("address", "").lower() == mac.lower():
            log.info(f"VM {vm_id}: a NIC with MAC {mac} is attached already")
            return ""
    # the same rule files as deploy: the NIC gets what it would have got deployed with the VM
    shaped = hotplug.shape(el, live, vm, vm_id, config, "attach_nic-tweaks", target=mac.lower())
    dom.attach(etree.tostring(shaped.device))
    hotplug.stamp(dom, shaped, vm_id, "attach_nic-tweaks")
    log.info(f"VM {vm_id}: NIC {xmldoc.text(nic, 'NIC_ID')} attached ({mac})")
    return ""


def _mac(raw: str) -> str:
    if not _MAC.fullmatch(raw):
        raise DriverError(f"MAC {raw!r} is not a MAC address")
    return raw


def _value(nic: etree._Element, attr: str, pattern: re.Pattern[str], what: str) -> str:
    value = xmldoc.text(nic, attr)
    if value and not pattern.fullmatch(value):
        raise DriverError(f"NIC {attr}={value!r} is not {what}")
    return value


def _number(nic: etree._Element, attr: str) -> str:
    value = xmldoc.text(nic, attr)
    if value and (not value.isascii() or not value.isdigit() or len(value) > 12):
        raise DriverError(f"NIC {attr}={value!r} is not a whole number")
    return value


def interface_element(nic: etree._Element, config: Config, vcpus: str) -> etree._Element:
    """The libvirt ``<interface>`` for the attached NIC, as OpenNebula's attach builds it."""
    bridge = _value(nic, "BRIDGE", _NAME, "a bridge name")
    el = etree.Element("interface", type="bridge" if bridge else "ethernet")
    if bridge:
        if "openvswitch" in xmldoc.text(nic, "BRIDGE_TYPE").lower():
            etree.SubElement(el, "virtualport", type="openvswitch")
        etree.SubElement(el, "source", bridge=bridge)
    etree.SubElement(el, "mac", address=_mac(xmldoc.text(nic, "MAC")))
    script = _value(nic, "SCRIPT", _PATH, "a script path")
    if script:
        etree.SubElement(el, "script", path=script)
    target = _value(nic, "TARGET", _NAME, "a device name")
    if target:
        etree.SubElement(el, "target", dev=target)
    order = _number(nic, "ORDER")
    if order:
        etree.SubElement(el, "boot", order=order)
    model = xmldoc.text(nic, "MODEL") or config.get("DEFAULT_ATTACH_NIC_MODEL")
    if model:
        if not _NAME.fullmatch(model):
            raise DriverError(f"NIC MODEL={model!r} is not a model name")
        etree.SubElement(el, "model", type=model)
    queues = xmldoc.text(nic, "VIRTIO_QUEUES")
    if model == "virtio" and queues:
        if queues.lower() == "auto":  # oned: one queue per vCPU
            queues = vcpus
        else:
            queues = str(numbers.whole(queues, "NIC VIRTIO_QUEUES=", minimum=1, maximum=1024,
                                       unit="a whole number or auto"))
        etree.SubElement(el, "driver", name="vhost", queues=queues)
    flt = xmldoc.text(nic, "FILTER") or config.get("DEFAULT_ATTACH_NIC_FILTER")
    if flt and xmldoc.text(nic, "IP"):
        if not _NAME.fullmatch(flt):
            raise DriverError(f"NIC FILTER={flt!r} is not a filter name")
        ref = etree.SubElement(el, "filterref", filter=flt)
        for attr in ("IP", "VROUTER_IP"):
            ip = _value(nic, attr, _IP, "an IP address")
            if ip:
                etree.SubElement(ref, "parameter", name="IP", value=ip)
    tune = None
    for tag, prefix in BANDWIDTH:
        limits = {key: _number(nic, f"{prefix}_{attr}")
                  for key, attr in (("average", "AVG_BW"), ("peak", "PEAK_BW"), ("burst", "PEAK_KB"))}
        limits = {k: v for k, v in limits.items() if v}
        if limits:
            if tune is None:
                tune = etree.SubElement(el, "bandwidth")
            etree.SubElement(tune, tag, limits)
    return el
