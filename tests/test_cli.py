"""`one-tweaks` as operators run it: outputs, exit codes, one-line errors, atomic writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import ONE, ROOT, deployment, run_cli, vm_xml, write_rule
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from tweaks import registry
from tweaks.cli import _parser, fast_apply_args, main

SAMPLE = ROOT / "tests" / "fixtures" / "sample"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    dom = tmp_path / "deployment.0"
    vm = tmp_path / "vm.xml"
    dom.write_bytes(deployment())
    vm.write_bytes(vm_xml({"T_IOTHREADS_OVERRIDE": "3"}))
    return dom, vm


def no_traceback(proc_stderr: bytes) -> None:
    assert b"Traceback" not in proc_stderr


def test_apply_prints_the_tweaked_domain(files, assert_valid):
    dom, vm = files
    proc = run_cli("apply", str(dom), "--vm", str(vm))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert_valid(proc.stdout)
    assert etree.fromstring(proc.stdout).findtext("iothreads") == "3"


def test_apply_reads_stdin_and_writes_out_atomically(files, tmp_path, assert_valid):
    dom, vm = files
    out = tmp_path / "out.xml"
    out.write_text("old")
    os.chmod(out, 0o640)
    proc = run_cli("apply", "-", "--vm", str(vm), "-o", str(out), stdin=dom.read_bytes())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""
    assert_valid(out.read_bytes())
    assert stat.S_IMODE(out.stat().st_mode) == 0o640, "OUT keeps its mode"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary file left"


def test_unwritable_out_fails_with_one_line(files, tmp_path):
    dom, vm = files
    target = tmp_path / "no-such-dir" / "out.xml"
    proc = run_cli("apply", str(dom), "--vm", str(vm), "-o", str(target))
    assert proc.returncode != 0
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and str(target) in lines[0] and "cannot write" in lines[0]


@pytest.mark.parametrize(
    ("domain", "vm", "message"),
    [
        ("missing.xml", None, "missing.xml: cannot read domain XML: No such file or directory"),
        ("broken.xml", None, "broken.xml: malformed XML"),
        (None, "broken.xml", "broken.xml: malformed XML"),
        (None, "missing.xml", "missing.xml: cannot read VM XML"),
        ("empty.xml", None, "empty.xml: malformed XML"),
        ("vmroot.xml", None, "root element is <VM>, not <domain>"),
    ],
)
def test_bad_inputs_give_one_line_naming_the_file(files, tmp_path, domain, vm, message):
    (tmp_path / "broken.xml").write_text("<domain><name>x</domain")
    (tmp_path / "empty.xml").write_text("")
    (tmp_path / "vmroot.xml").write_bytes(vm_xml())
    dom_path = str(tmp_path / domain) if domain else str(files[0])
    vm_path = str(tmp_path / vm) if vm else str(files[1])
    proc = run_cli("apply", dom_path, "--vm", vm_path)
    assert proc.returncode == 2
    assert proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]
    no_traceback(proc.stderr)


def test_explain_and_json_reports(files):
    dom, vm = files
    proc = run_cli("apply", str(dom), "--vm", str(vm), "--explain")
    text = proc.stderr.decode()
    assert "rule iothreads: applied" in text
    assert "/domain/iothreads/text(): '2' -> '3'" in text
    assert "rule video: not-matched (no value for video: USER_TEMPLATE/T_VIDEO_MODEL not set)" in text
    proc = run_cli("apply", str(dom), "--vm", str(vm), "--json")
    report = json.loads(proc.stderr)
    assert report["vm"] == "42"
    assert report["validation"] == "ok"
    iothreads = next(r for r in report["rules"] if r["rule"] == "iothreads")
    assert iothreads["changes"][0] == {"xpath": "/domain/iothreads/text()", "before": "2", "after": "3"}


def test_bad_user_value_warns_but_exits_zero(files):
    dom, vm = files
    vm.write_bytes(vm_xml({"T_IOTHREADS_OVERRIDE": "-1"}))
    proc = run_cli("apply", str(dom), "--vm", str(vm))
    assert proc.returncode == 0
    assert proc.stderr.decode() == (
        "one-tweaks: VM 42: rule iothreads: USER_TEMPLATE/T_IOTHREADS_OVERRIDE='-1': not a whole number; "
        "rule skipped\n"
    )


@pytest.mark.parametrize("field", ["VCPU", "CPU", "MEMORY"])
@pytest.mark.parametrize("value", ["1e400", "nan", "inf", "-inf", "12345678901234567890"])
def test_unusable_numbers_in_the_vm_document_warn_and_deploy(files, field, value):
    """CPU/VCPU/MEMORY of the VM document that no VM has (an infinity, NaN, 20 digits)
    are bad input: one warning naming the attribute as written, the deploy goes on
    (exit 0), never an internal error (exit 70)."""
    dom, vm = files
    template = {field: value, "VCPU": "2"} if field == "CPU" else {field: value}
    vm.write_bytes(vm_xml({"T_CPU_SOCKETS": "2", "T_NIC_QUEUES": "vcpu"}, template=template))
    proc = run_cli("apply", str(dom), "--vm", str(vm), "--explain")
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "internal error" not in err and "Traceback" not in err
    assert f"one-tweaks: VM 42: TEMPLATE/{field}='{value}' is not a" in err
    assert etree.fromstring(proc.stdout).tag == "domain"


@pytest.mark.parametrize(("tag", "value"), [("vcpu", "1e400"), ("vcpu", "9" * 25), ("memory", "9" * 400),
                                            ("memory", "nan")])
def test_unusable_numbers_in_the_domain_do_not_crash(files, tag, value):
    dom, vm = files
    root = etree.fromstring(dom.read_bytes(), etree.XMLParser(strip_cdata=False))
    root.find(tag).text = value
    dom.write_bytes(etree.tostring(root))
    vm.write_bytes(vm_xml({"T_CPU_SOCKETS": "2", "T_MEMORY_MAX": "8192", "T_VCPU_MAX": "8", "T_SCSI_QUEUES": "vcpu"}))
    proc = run_cli("apply", str(dom), "--vm", str(vm))
    assert proc.returncode == 0, proc.stderr.decode()
    assert "internal error" not in proc.stderr.decode()


def test_check_ok_and_problems(tmp_path):
    proc = run_cli("check")
    assert proc.returncode == 0
    assert proc.stdout.decode().endswith("rules enabled: OK\n")
    bad = write_rule(tmp_path, "50-bad.yaml", "name: bad\ntweaks:\n  - iothreads:\n      count: zero\n")
    proc = run_cli("check", "--rules", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stdout.decode().startswith(f"{bad}:4: rule bad: ")
    proc = run_cli("check", "--rules", str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert proc.stderr.decode() == f"one-tweaks: {tmp_path / 'nope'}: rules directory does not exist\n"


def test_schema_is_the_committed_file_and_valid_json_schema():
    import jsonschema

    proc = run_cli("schema")
    assert proc.returncode == 0
    assert proc.stdout == (ROOT / "tweaks" / "rules.schema.json").read_bytes(), (
        "tweaks/rules.schema.json is stale: run `one-tweaks schema > tweaks/rules.schema.json`"
    )
    jsonschema.Draft202012Validator.check_schema(json.loads(proc.stdout))


def test_list_names_every_tweak_and_parameter():
    proc = run_cli("list")
    text = proc.stdout.decode()
    for tweak in registry.all_tweaks():
        assert f"{tweak.name}: {tweak.summary}" in text
        for param in tweak.params:
            assert f"    {param.name}: {param.type_doc()}" in text


def test_usage_errors_exit_2():
    proc = run_cli("apply")
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("one-tweaks: ")
    assert run_cli("frobnicate").returncode == 2


def test_sample_vm_shows_changes(assert_valid):
    proc = run_cli("apply", str(SAMPLE / "deployment.xml"), "--vm", str(SAMPLE / "vm.xml"), "--explain")
    assert proc.returncode == 0
    assert_valid(proc.stdout)
    assert proc.stderr.decode().count(": applied") >= 5


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_no_traceback_for_any_domain_bytes(tmp_path_factory, capsys, data):
    base = tmp_path_factory.mktemp("fz")
    dom, vm = base / "d.xml", base / "vm.xml"
    dom.write_bytes(data)
    vm.write_bytes((ONE / "vm-42.xml").read_bytes())
    code = main(["apply", str(dom), "--vm", str(vm), "-o", str(base / "out.xml")])
    err = capsys.readouterr().err
    assert code in (0, 2)
    assert "Traceback" not in err
    if code:
        assert len(err.splitlines()) == 1 and str(dom) in err


def test_readme_catalogue_is_current():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- catalogue:start -->\n", "<!-- catalogue:end -->"
    table = readme[readme.index(start) + len(start): readme.index(end)]
    proc = run_cli("list", "--markdown")
    assert table == proc.stdout.decode(), "README catalogue is stale: paste `one-tweaks list --markdown`"


def test_readme_has_exactly_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash .ci/demo", "bash .ci/test"]
    assert "exec bash .ci/test" in (ROOT / ".ci" / "run").read_text()


APPLY_WORDS = ["d.xml", "-", "--vm", "v.xml", "--rules", "r1", "r2", "-o", "out", "--output", "--explain",
               "--json", "--vm=x", "--ru", "-h", "--", "-x", "apply"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(APPLY_WORDS), max_size=9))
def test_fast_apply_arguments_mean_what_argparse_makes_of_them(words):
    """The deploy path skips argparse; whatever it accepts, argparse reads the same way."""
    argv = ["apply", *words]
    fast = fast_apply_args(argv)
    if fast is None:
        return
    ns = _parser().parse_args(argv)
    assert (fast.domain, fast.vm, fast.rules, fast.output, fast.explain, fast.json) == (
        ns.domain, ns.vm, ns.rules, ns.output, ns.explain, ns.json)


def test_the_deploy_hook_form_takes_the_fast_path():
    args = fast_apply_args(["apply", "deployment.0", "--vm", "vm.xml", "--rules", "a", "--rules", "b", "-o", "o",
                            "--explain"])
    assert args is not None
    assert (args.domain, args.vm, args.rules, args.output, args.explain) == ("deployment.0", "vm.xml", ["a", "b"],
                                                                            "o", True)
    assert fast_apply_args(["apply", "--help"]) is None
    assert fast_apply_args(["apply", "d.xml"]) is None, "no --vm: argparse says what is missing"


def test_apply_output_is_complete_after_the_fast_exit(tmp_path, capsys):
    """`apply` leaves through os._exit: every byte of a large result reaches the pipe first."""
    dom = etree.fromstring(deployment())
    devices = dom.find("devices")
    for i in range(600):
        disk = etree.SubElement(devices, "disk", type="file", device="disk")
        etree.SubElement(disk, "source", file=f"/var/lib/one/datastores/0/42/disk.{i + 10}")
        etree.SubElement(disk, "target", dev=f"vd{chr(97 + i // 26)}{chr(97 + i % 26)}", bus="virtio")
    dom_path, vm_path = tmp_path / "deployment.0", tmp_path / "vm.xml"
    dom_path.write_bytes(etree.tostring(dom))
    vm_path.write_bytes(vm_xml({"T_IOTHREADS_OVERRIDE": "3", "T_DISKSERIAL": "YES"}))
    proc = run_cli("apply", str(dom_path), "--vm", str(vm_path), "--explain")
    assert proc.returncode == 0, proc.stderr
    assert main(["apply", str(dom_path), "--vm", str(vm_path), "--explain"]) == 0
    in_process = capsys.readouterr()
    assert len(proc.stdout) > 65536, "more than a pipe buffer"
    assert proc.stdout == in_process.out.encode()
    assert proc.stderr == in_process.err.encode()
    failed = run_cli("apply", str(tmp_path / "missing.xml"), "--vm", str(vm_path))
    assert failed.returncode == 2 and failed.stderr.count(b"\n") == 1
