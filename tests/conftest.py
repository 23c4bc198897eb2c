"""Shared fixtures: libvirt's schema, sample documents, an isolated rules/cache setup."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from lxml import etree

from tweaks import engine, loader
from tweaks.engine import Outcome
from tweaks.validate import DomainSchema

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ONE = FIXTURES / "opennebula"
DOMAIN_RNG = "/usr/share/libvirt/schemas/domain.rng"


@pytest.fixture(scope="session")
def rng() -> etree.RelaxNG:
    """libvirt's own domain schema; the suite fails (not skips) without it."""
    assert os.path.exists(DOMAIN_RNG), f"{DOMAIN_RNG} missing: install libvirt-clients"
    return etree.RelaxNG(file=DOMAIN_RNG)


@pytest.fixture(scope="session")
def domain_schema() -> DomainSchema:
    return DomainSchema(DOMAIN_RNG)


def schema_errors(rng: etree.RelaxNG, xml: bytes | etree._ElementTree) -> list[str]:
    tree = xml if isinstance(xml, etree._ElementTree) else etree.ElementTree(etree.fromstring(xml))
    if rng.validate(tree):
        return []
    return [f"{e.line}: {e.message}" for e in rng.error_log]


@pytest.fixture
def assert_valid(rng: etree.RelaxNG):  # type: ignore[no-untyped-def]
    def check(xml: bytes | etree._ElementTree) -> None:
        errors = schema_errors(rng, xml)
        assert not errors, "libvirt domain.rng rejects the output: " + "; ".join(errors)

    return check


@pytest.fixture(autouse=True)
def isolated_rules(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test reads the machine's /etc/one/tweaks.d or the user's cache."""
    base = tmp_path_factory.mktemp("iso")
    (base / "etc").mkdir()
    monkeypatch.setenv("ONE_TWEAKS_RULES_DIR", str(base / "etc"))
    monkeypatch.setenv("ONE_TWEAKS_CACHE_DIR", str(base / "cache"))
    yield


def deployment() -> bytes:
    return (ONE / "deployment.0.xml").read_bytes()


def vm_xml(user: Mapping[str, str] | None = None, *, vcpu: int | None = None,
           template: Mapping[str, str] | None = None) -> bytes:
    """vm-42.xml with USER_TEMPLATE attributes added (values are escaped, not CDATA)."""
    root = etree.fromstring((ONE / "vm-42.xml").read_bytes(), etree.XMLParser(strip_cdata=False))
    ut = root.find("USER_TEMPLATE")
    for key, value in (user or {}).items():
        el = etree.SubElement(ut, key)
        el.text = value
    tpl = root.find("TEMPLATE")
    if vcpu is not None:
        tpl.find("VCPU").text = str(vcpu)
    for path, value in (template or {}).items():
        parent = tpl
        for part in path.split("/"):
            found = parent.find(part)
            parent = found if found is not None else etree.SubElement(parent, part)
        parent.text = value
    return etree.tostring(root)


def domain_with_vcpu(vcpu: int, data: bytes | None = None) -> bytes:
    root = etree.fromstring(data or deployment(), etree.XMLParser(strip_cdata=False))
    root.find("vcpu").text = str(vcpu)
    return etree.tostring(root)


def write_rule(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def apply(domain: bytes, vm: bytes, rules_dirs: list[str] | None = None, *, shipped: bool = True,
          schema: DomainSchema | None = None) -> Outcome:
    """Run the engine in-process the way `one-tweaks apply` does."""
    if shipped:
        ruleset = loader.load(rules_dirs or [])
        rules = ruleset.rules
    else:
        from tweaks.checker import check_files

        files = loader.collect([(d, True) for d in rules_dirs or []])
        rules = check_files(loader._read_all(files)).rules
    return engine.apply_rules(engine.parse_xml(domain, "domain"), engine.parse_xml(vm, "vm"), rules,
                              schema=schema or DomainSchema(DOMAIN_RNG))


def run_cli(*args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """`one-tweaks ARGS` as a separate process (python -m tweaks)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "tweaks", *args], input=stdin, capture_output=True,
                          env=full_env, cwd=cwd, timeout=120)


def _xml_char(c: str) -> bool:
    o = ord(c)
    return o in (9, 10, 13) or 0x20 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or o >= 0x10000


def xml_text(max_size: int = 80):  # type: ignore[no-untyped-def]
    """Hypothesis strategy: any text an XML document (so oned) can carry."""
    from hypothesis import strategies as st

    return st.text(st.characters(codec="utf-8").filter(_xml_char), max_size=max_size)
