"""Conditions, facts and parameter types, plus fuzzing of whole rule files."""

from __future__ import annotations

import pytest
import yaml
from conftest import ONE, apply, deployment, vm_xml, write_rule, xml_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from tweaks import facts as facts_mod
from tweaks.checker import check_file
from tweaks.conditions import ConditionError, compile_condition
from tweaks.errors import ParamError
from tweaks.params import Bool, Choice, Int, Text, clean_text, split_key_values


@pytest.fixture(scope="module")
def facts() -> facts_mod.Facts:
    vm = etree.fromstring(vm_xml({"T_X": "7", "NESTED": "ignored"}))
    dom = etree.fromstring(deployment())
    return facts_mod.from_documents(vm, dom)


def test_facts_from_the_vm_document(facts):
    s = facts.scalars
    assert (s["vm.id"], s["vm.name"], s["vm.uname"], s["vm.gid"]) == ("42", "web-42", "oneadmin", "0")
    assert (s["vm.vcpu"], s["vm.memory"], s["vm.cpu"]) == ("4", "4096", "1")
    assert s["template.OS/MACHINE"] == "q35"
    assert s["template.FEATURES/IOTHREADS"] == "2"
    assert s["user.T_X"] == "7"
    assert (s["history.host"], s["history.ds_id"], s["history.tm_mad"], s["history.vm_mad"]) == (
        "node1", "101", "blk", "kvm")
    assert (s["domain.machine"], s["domain.iothreads"], s["domain.type"]) == ("q35", "2", "kvm")
    assert "scsi:virtio-scsi" in facts.controllers
    kinds = {d["id"]: d["kind"] for d in facts.disks}
    assert kinds == {"0": "image", "1": "image", "2": "volatile", "3": "context"}
    assert facts.disk("1")["persistent"] == "yes" and facts.disk("0")["persistent"] == "no"
    assert facts.disk("3")["tm_mad"] == "blk", "the context disk inherits the system TM_MAD"
    assert facts.values("disk.tm_mad") == ["blk"] * 4
    assert facts.nics[0]["target"] == "one-42-0"


def test_vcpu_falls_back_to_cpu_rounded_up():
    vm = etree.fromstring((ONE / "vm-42.xml").read_bytes())
    tpl = vm.find("TEMPLATE")
    tpl.remove(tpl.find("VCPU"))
    tpl.find("CPU").text = "2.5"
    assert facts_mod.from_documents(vm, None).vcpu == 3


@pytest.mark.parametrize(
    ("when", "holds"),
    [
        ({"present": "user.T_X"}, True),
        ({"absent": "user.T_X"}, False),
        ({"fact": "user.T_X", "equals": 7}, True),
        ({"fact": "user.T_X", "equals": "7"}, True),
        ({"fact": "user.T_X", "in": [1, 2, 7]}, True),
        ({"fact": "user.T_X", "regex": "^[0-9]$"}, True),
        ({"fact": "vm.vcpu", "ge": 4}, True),
        ({"fact": "vm.vcpu", "gt": 4}, False),
        ({"fact": "vm.vcpu", "lt": 5}, True),
        ({"fact": "vm.vcpu", "le": 3}, False),
        ({"fact": "vm.name", "lt": 5}, False),
        ({"fact": "disk.kind", "equals": "volatile"}, True),
        ({"fact": "disk.kind", "equals": "cdrom"}, False),
        ({"all": [{"present": "user.T_X"}, {"fact": "domain.machine", "regex": "q35"}]}, True),
        ({"any": [{"absent": "user.T_X"}, {"fact": "history.tm_mad", "in": ["ssh", "blk"]}]}, True),
        ({"not": {"fact": "history.tm_mad", "equals": "blk"}}, False),
        ({"fact": "user.MISSING", "equals": "x"}, False),
    ],
)
def test_conditions(facts, when, holds):
    assert (compile_condition(when).evaluate(facts) is None) is holds


@pytest.mark.parametrize(
    "bad",
    [{}, {"all": []}, {"all": "x"}, {"not": {}}, {"fact": "user.X"}, {"fact": "user.X", "equals": 1, "in": [1]},
     {"fact": "user.X", "lt": "3"}, {"fact": "bogus.X", "equals": 1}, {"present": 3}, {"fact": "user.X", "regex": "["},
     {"fact": "user.X", "in": [[1]]}, {"any": [{"present": "user.X"}], "all": []}],
)
def test_bad_conditions_are_refused(bad):
    with pytest.raises(ConditionError):
        compile_condition(bad)


def test_param_types():
    count = Int("n", "", minimum=1, maximum=8, words=("vcpu",))
    assert count.parse("4") == 4 and count.parse(" VCPU ") == "vcpu" and count.parse(3) == 3
    for bad in ("0", "9", "-1", "1.5", "0x4", "", True, None, "4 4", "٤"):
        with pytest.raises(ParamError):
            count.parse(bad)
    flag = Bool("b", "")
    assert [flag.parse(v) for v in ("YES", "no", "1", "off", True)] == [True, False, True, False, True]
    with pytest.raises(ParamError):
        flag.parse("maybe")
    assert Choice("c", "", choices=("a", "b")).parse("B") == "b"
    with pytest.raises(ParamError):
        Text("t", "", pattern="[a-z]+").parse("a-b")
    with pytest.raises(ParamError, match="control characters"):
        clean_text("a\x01b")
    with pytest.raises(ParamError, match="longer than"):
        clean_text("a" * 513)
    keys = {"heads": Int("heads", "", minimum=1, maximum=16)}
    assert split_key_values("heads=2", keys) == {"heads": 2}
    for bad in ("heads", "heads=2 heads=3", "x=1", "heads=99"):
        with pytest.raises(ParamError):
            split_key_values(bad, keys)


# --- fuzzing rule files: check never raises, deploy never breaks ------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.text(max_size=12),
                    st.sampled_from(["vcpu", "user.T_X", "round-robin", "yes"]))
keys = st.sampled_from(["name", "when", "tweaks", "enabled", "description", "iothreads", "count", "from",
                        "default", "fact", "equals", "regex", "all", "any", "not", "present", "video", "model",
                        "policy", "queues", "scsi_queues", "x"])
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(keys, inner, max_size=4), max_leaves=12)


def rule_shaped() -> st.SearchStrategy[dict[str, object]]:
    params = st.dictionaries(st.sampled_from(["count", "policy", "disks"]),
                             scalars | st.fixed_dictionaries({"from": st.sampled_from(["user.T_X", "vm.vcpu"])},
                                                             optional={"default": scalars}), max_size=3)
    return st.fixed_dictionaries(
        {"name": st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
         "tweaks": st.lists(st.fixed_dictionaries({"iothreads": params}), min_size=1, max_size=2)},
        optional={"when": documents, "enabled": st.booleans()})


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(doc=documents | rule_shaped(), raw=st.binary(max_size=60))
def test_fuzzed_rule_files_never_crash_the_checker(doc, raw):
    text = yaml.safe_dump(doc).encode()
    for data in (text, raw, text[: len(text) // 2]):
        _rule, problems = check_file("/r/10-x.yaml", data)
        for problem in problems:
            assert problem.file == "/r/10-x.yaml" and problem.line >= 1 and problem.message


@FUZZ
@given(doc=rule_shaped(), value=xml_text(20))
def test_fuzzed_rules_and_values_never_break_a_deploy(tmp_path_factory, rng, doc, value):
    directory = tmp_path_factory.mktemp("rules")
    write_rule(directory, "50-fuzz.yaml", yaml.safe_dump(doc))
    outcome = apply(deployment(), vm_xml({"T_X": value}), [str(directory)])
    assert rng.validate(outcome.tree)
    assert all(r.status != "rolled-back" for r in outcome.report.results), outcome.report.to_text()
