"""Warnings and --explain quote every value as its author wrote it: never a parsed form
(``True`` for ``on``, ``4`` for ``04``) and never a Python object's repr
(``<...LoaderSpec object at 0x...>``). Checked on the engine layer for every parameter of
every tweak, and end to end for every attribute the shipped rules read."""

from __future__ import annotations

import re

import pytest
from conftest import apply, domain_with_vcpu, vm_xml
from lxml import etree

from tweaks import registry
from tweaks.errors import ParamError, shown
from tweaks.facts import Facts
from tweaks.tweak import ORIGIN_VM, Context
from tweaks.xmledit import Editor

_OBJECT = re.compile(r" object at 0x|<[A-Za-z_.]+ object")
# Values that parse but whose parsed form differs from the text (case, padding, words),
# plus values that fail to parse; all are printable, so each is shown exactly as written.
VALUES = ["On", "YES", "0004", "02", "vcpu", "delete", "ENABLED", "1", "no",
          "/var/tmp/one/OVMF/OVMF_CODE.fd:secure=yes", "storpool:type=file", "type=qxl heads=99",
          "02:00:00:00:00:01", "on:retries=9999", "x=1", "1e400", "<x/>"]


def _attributes() -> list[str]:
    names = set()
    for tweak in registry.all_tweaks():
        for attribute in tweak.attributes:
            names.add(attribute.replace("<id>", "0"))
    return sorted(names)


def _pairs(text: str) -> list[tuple[str, str]]:
    """Every ``USER_TEMPLATE/NAME=VALUE:`` a message shows."""
    return re.findall(r"USER_TEMPLATE/([A-Z0-9_]+)=(.*?): ", text)


@pytest.mark.parametrize("tweak", registry.names())
def test_reject_quotes_the_value_as_written_for_every_parameter(tweak):
    """The engine hands each tweak the written values next to the parsed ones; ``reject``
    (how every tweak refuses a value that does not fit the VM) quotes the written one."""
    t = registry.get(tweak)
    root = etree.fromstring(b"<domain/>")
    for param in t.params:
        written = f"  {param.name.upper()} As Written "
        ctx = Context(tweak=tweak, editor=Editor(etree.ElementTree(root)), facts=Facts(),
                      params={param.name: object()}, origins={param.name: ORIGIN_VM},
                      sources={param.name: f"USER_TEMPLATE/T_{param.name.upper()}"},
                      raws={param.name: written})
        message = ctx.reject(param.name, "does not fit").describe()
        assert message == f"USER_TEMPLATE/T_{param.name.upper()}={written!r}: does not fit"


def test_shown_never_prints_an_object_repr():
    class Opaque:
        pass

    class Named:
        def __str__(self) -> str:
            return "/usr/share/OVMF/"

    assert shown(Opaque()) == "<Opaque>"
    assert shown(Named()) == "'/usr/share/OVMF/'"
    assert shown("on") == "'on'" and shown(True) == "True" and shown(4) == "4"
    assert shown("a\x1b[31m") == repr("a\x1b[31m")  # control characters stay escaped
    assert ParamError("bad", "USER_TEMPLATE/T_X", Opaque()).describe() == "USER_TEMPLATE/T_X=<Opaque>: bad"


@pytest.mark.parametrize("attribute", _attributes())
def test_every_shipped_attribute_is_quoted_as_written(attribute):
    """Each attribute the shipped rules read, with values users type, on a one-vCPU VM
    (so counts above one are refused after parsing): every warning and the --explain
    text show the value exactly as written (surrounding blanks aside), and no object."""
    domain = domain_with_vcpu(1).replace(b"<features>", b"<features><hyperv><vpindex state='on'/></hyperv>")
    for value in VALUES:
        extra = {"T_HV_VPINDEX": "off"} if attribute.startswith("T_HV_") and attribute != "T_HV_VPINDEX" else {}
        outcome = apply(domain, vm_xml({attribute: value, **extra}, vcpu=1,
                                       template={"FEATURES/HYPERV": "yes"}))
        text = "\n".join(outcome.report.warnings) + "\n" + outcome.report.to_text()
        assert not _OBJECT.search(text), text
        for name, quoted in _pairs(text):
            expected = {attribute: value, **extra}.get(name)
            if expected is not None:
                assert quoted == repr(expected), (attribute, value, text)


@pytest.mark.parametrize(("user", "needle"), [
    ({"T_IOTHREADS_OVERRIDE": "0004"}, "USER_TEMPLATE/T_IOTHREADS_OVERRIDE='0004': more iothreads"),
    ({"T_SCSI_QUEUES": "02"}, "USER_TEMPLATE/T_SCSI_QUEUES='02': more queues"),
    ({"T_NIC_QUEUES": "02"}, "USER_TEMPLATE/T_NIC_QUEUES='02': more queues"),
    ({"T_NIC0_QUEUES": "0002"}, "USER_TEMPLATE/T_NIC0_QUEUES='0002': more queues"),
    ({"T_CPU_SOCKETS": "02"}, "USER_TEMPLATE/T_CPU_SOCKETS='02': 2 sockets do not divide 1 vCPUs"),
    ({"T_OS_LOADER": "/etc/x.fd"}, "USER_TEMPLATE/T_OS_LOADER='/etc/x.fd': /etc/x.fd is not in the loader allowlist"),
])
def test_refusals_after_parsing_quote_the_attribute(user, needle):
    outcome = apply(domain_with_vcpu(1), vm_xml(user, vcpu=1))
    assert any(needle in w for w in outcome.report.warnings), outcome.report.warnings


def test_hyperv_refusal_shows_on_not_true():
    domain = domain_with_vcpu(2).replace(b"<features>", b"<features><hyperv/>")
    outcome = apply(domain, vm_xml({"T_HV_SYNIC": "on", "T_HV_VPINDEX": "Off"}, vcpu=2,
                                   template={"FEATURES/HYPERV": "yes"}))
    assert any("USER_TEMPLATE/T_HV_SYNIC='on': QEMU needs hv-vpindex" in w for w in outcome.report.warnings), \
        outcome.report.warnings
