"""Every shipped rule on libvirt's own test domains (Debian's libvirt 9.0 source package,
fetched once per machine by .ci/setup-corpus into /var/cache/one-tweaks-tests/; never part
of the repository), each with two T_* combinations drawn from tests/idempotence.py:
applying the rules to their own output changes nothing, no rule fails with an exception,
a valid domain stays valid, nothing is lost.

Under CI (CI=true) a missing corpus fails the suite; elsewhere the test is skipped with the
command that fetches it.
"""

from __future__ import annotations

import os
import random
import subprocess
import zlib
from pathlib import Path

import pytest
from conftest import ROOT
from idempotence import check, pick, vm_document
from lxml import etree

CORPUS = Path(os.environ.get("ONE_TWEAKS_CORPUS", "/var/cache/one-tweaks-tests/libvirt-9.0"))
# Directories of domain XMLs in libvirt's tests/ (other files there are not domains).
DIRS = ("qemuxml2argvdata", "qemuxml2xmloutdata", "genericxml2xmlindata", "genericxml2xmloutdata",
        "domainschemadata", "qemuhotplugtestdomains")
CASES_PER_DOMAIN = 2
# libvirt's corpus holds ~1,800 domain files; far fewer means a broken fetch.
MIN_DOMAINS = 1000


def _domains() -> list[Path]:
    if not (CORPUS / ".complete").is_file():
        return []
    return sorted(p for d in DIRS for p in (CORPUS / d).glob("*.xml"))


DOMAINS = _domains()


def _missing() -> str:
    return f"libvirt's test domains are not in {CORPUS}: run `bash .ci/setup-corpus`"


def test_corpus_is_there():
    """Fails under CI when the corpus is missing, so the cases below cannot silently vanish."""
    if not DOMAINS:
        if os.environ.get("CI") == "true":
            pytest.fail(_missing())
        pytest.skip(_missing())
    assert len(DOMAINS) >= MIN_DOMAINS, f"only {len(DOMAINS)} domain XMLs in {CORPUS}"


def test_setup_corpus_runs_no_apt_when_cached(tmp_path):
    """.ci/setup-corpus is idempotent: with the corpus cached it calls no apt tool at all."""
    if not DOMAINS:
        pytest.skip(_missing())
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for tool in ("apt-get", "apt-cache", "flock"):
        (stubs / tool).write_text(f"#!/bin/sh\necho {tool} >> {tmp_path}/called\nexit 1\n")
        (stubs / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "ONE_TWEAKS_CORPUS_CACHE": str(CORPUS.parent)}
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "setup-corpus")], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "called").exists()


def _read(path: Path) -> etree._Element | None:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, strip_cdata=False)
    try:
        root = etree.fromstring(path.read_bytes(), parser)
    except etree.XMLSyntaxError:
        return None  # a few test inputs are deliberately broken
    return root if root is not None and root.tag == "domain" else None


@pytest.mark.parametrize("index", range(8))
def test_corpus_second_apply_changes_nothing(index):
    """One eighth of the corpus per test (a failure report stays readable)."""
    if not DOMAINS:
        if os.environ.get("CI") == "true":
            pytest.fail(_missing())
        pytest.skip(_missing())
    failures: list[str] = []
    cases = 0
    for path in DOMAINS[index::8]:
        root = _read(path)
        if root is None:
            continue
        data = path.read_bytes()
        rng = random.Random(zlib.crc32(f"{path.parent.name}/{path.name}".encode()))
        for case in range(CASES_PER_DOMAIN):
            user = pick(rng, share=0.6 if case else 0.3)
            vm = vm_document(root, user)
            cases += 1
            for problem in check(data, vm):
                failures.append(f"{path.parent.name}/{path.name} {user}: {problem}")
    assert cases > 0
    assert not failures, f"{len(failures)} of {cases} cases:\n" + "\n".join(failures[:25])
