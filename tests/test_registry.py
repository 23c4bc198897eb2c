"""A storage backend is one module: the registry (datastore/backends/__init__.py) finds it, the
drivers take its names, configuration and capabilities from it, ``one-tweaks install`` and
``doctor`` take its oned.conf entries and checks from it, and the tweak rules get its facts.

The backend under test is a toy written into a temporary directory that is added to the
``datastore.backends`` package (a StorPool backend under the driver name ``toy``, with its
own names, attributes and oned.conf entries, and network disks); nothing outside its module
mentions it.
"""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from sim import oned as oned_sim
from test_install import Front

import datastore.backends as registry
from datastore.driver import Driver
from datastore.facts import storage_facts
from datastore.naming import for_driver
from onelib.install import declared, plan, template
from tweaks import engine
from tweaks.loader import load

ROOT = Path(__file__).resolve().parent.parent

TOY = textwrap.dedent('''
    """The toy backend of tests/test_registry.py."""

    from __future__ import annotations

    from typing import ClassVar

    from datastore.backend import Attribute
    from datastore.backends.storpool import StorPool
    from datastore.naming import Names


    class ToyNames(Names):
        def image(self, image_id: int) -> str:
            return f"{self.px}-toy-{image_id}"


    class Toy(StorPool):
        driver = "toy"
        name = "toy"
        scheme = ToyNames
        disk_form = "network"
        attributes = (Attribute("TOY_POOL", "pool0", kind="words"), Attribute("TOY_SIZE", "1", kind="int"))
        attribute_prefixes = ("TOYX_",)
        tm_mad_conf = (("LN_TARGET", "NONE"), ("CLONE_TARGET", "SELF"), ("SHARED", "YES"))
        ds_mad_conf = (("PERSISTENT_ONLY", "NO"),)
        restricted_attrs = (("IMAGE_RESTRICTED_ATTR", "TOY_POOL"),)
        live_disk_snapshots = ("kvm-toy", "qemu-toy")
        vmm_aliases: ClassVar[dict[str, str]] = {"snapshot_create-toy": "snapshotcreate"}
        group_snapshots = False

        @classmethod
        def facts(cls, vm, datastore, config, disks):
            return {"storage.toy_pool": "pool0"}, {d: {"storage_volume": f"toy-{d}", "other": "x"} for d in disks}

        @classmethod
        def doctor(cls, config, datastores, problem):
            super(StorPool, cls).doctor(config, datastores, problem)  # the declared kinds only
            problem(f"api: toy checked {len(datastores())} datastore(s) with TOY_POOL={config.get('TOY_POOL')}")


    BACKEND = Toy
''')


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = tmp_path / "backends"
    directory.mkdir()
    (directory / "toy.py").write_text(TOY)
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(directory)])
    monkeypatch.setattr(registry, "_index", None)
    shipped = declared.backends_dirs()
    monkeypatch.setattr(declared, "backends_dirs", lambda: [*shipped, str(directory)])
    yield directory
    sys.modules.pop("datastore.backends.toy", None)
    registry._index = None


def _datastore(attrs: dict[str, str], tm_mad: str = "toy") -> etree._Element:
    return oned_sim.datastore_document(100, "toy-images", ds_mad=tm_mad, tm_mad=tm_mad, attrs=attrs)


# --- the registry -------------------------------------------------------------------------------


def test_the_registry_finds_a_backend_module(toy: Path) -> None:
    cls = registry.backend_class("toy")
    assert cls.__name__ == "Toy" and cls.__module__ == "datastore.backends.toy"
    assert registry.drivers() == ["linstor_un", "rbd", "storpool", "toy"]
    assert registry.disk_forms() == {"linstor_un": "block", "rbd": "network", "storpool": "block", "toy": "network"}
    assert for_driver("toy", "two").image(7) == "two-toy-7"        # the backend's naming scheme
    assert for_driver("storpool").image(7) == "one-img-7"
    assert registry.find("ssh") is None and registry.find("") is None
    with pytest.raises(Exception, match="no storage backend for driver 'ceph'"):
        registry.backend_class("ceph")


def test_a_lookup_imports_only_the_backend_it_names() -> None:
    probe = ("import sys; from datastore.backends import find; "
             "assert find('ssh') is None and find('shared') is None; sp = find('storpool'); "
             "print(sp.__name__, sorted(m for m in sys.modules if m.startswith(('linstor', 'datastore.backends.'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.split(" ", 1) == ["StorPool", "['datastore.backends.storpool', "
                                        "'datastore.backends.storpool_api']\n"]


def test_configuration_keeps_the_attributes_the_backend_declares(toy: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONE_TWEAKS_CONF", str(tmp_path / "no.conf"))
    attrs = {"TOY_POOL": "fast", "TOYX_ANYTHING": "kept", "SP_API_HTTP_HOST": "sp.example", "CLONE_MODE": "x",
             "SOMETHING_ELSE": "dropped", "ONE_PX": "two"}
    drv = Driver("toy", _datastore(attrs))
    assert drv.config.get("TOY_POOL") == "fast" and drv.config.get("TOYX_ANYTHING") == "kept"
    assert drv.config.get("TOY_SIZE") == "1"                     # the declared default
    assert drv.config.get("ONE_PX") == "two" and drv.names.image(1) == "two-toy-1"
    for other in ("SP_API_HTTP_HOST", "CLONE_MODE", "SOMETHING_ELSE"):  # not the toy's: dropped
        assert drv.config.get(other) == "", other
    sp = Driver("storpool", _datastore(attrs, "storpool"))
    assert sp.config.get("SP_API_HTTP_HOST") == "sp.example" and sp.config.get("TOY_POOL") == ""
    assert sp.config.get("SP_DEVICE_DIR") == "/dev/storpool"     # StorPool's declared default
    lin = Driver("linstor_un", _datastore(attrs, "linstor_un"))
    assert lin.config.get("CLONE_MODE") == "x" and lin.config.get("SP_API_HTTP_HOST") == ""


# --- install and doctor --------------------------------------------------------------------------


def test_install_writes_what_the_backend_declares(toy: Path, tmp_path: Path) -> None:
    assert plan.known_drivers() == ["linstor_un", "rbd", "storpool", "toy"]
    built = plan.build()
    for action in plan.actions("tm"):
        assert built.scripts[f"tm/toy/{action}"] == f"#!{built.interpreter}\nfrom tm.entry import tm_main\ntm_main()\n"
    for action in plan.actions("datastore"):
        assert f"datastore/toy/{action}" in built.scripts
    assert plan.vmm_aliases()["snapshot_create-toy"] == "snapshotcreate"
    assert built.scripts["vmm/kvm/snapshot_create-toy"] == built.scripts["vmm/kvm/snapshot_create-tweaks"]
    assert ("IMAGE_RESTRICTED_ATTR", "TOY_POOL") in built.restricted

    front = Front(tmp_path / "front", "7.2")
    assert front.run("install") == 0
    assert "toy" in front.option("TM_MAD", "-d") and "toy" in front.option("DATASTORE_MAD", "-s")
    (tm_conf,) = template.find(front.attrs(), "TM_MAD_CONF", NAME="toy")
    assert [(p.key, p.value.text) for p in tm_conf.pairs or ()] == [
        ("NAME", "toy"), ("LN_TARGET", "NONE"), ("CLONE_TARGET", "SELF"), ("SHARED", "YES")]
    assert "kvm-toy qemu-toy" in front.execrc.read_text()
    assert (front.remotes / "tm/toy/clone").exists() and (front.remotes / "datastore/toy/cp").exists()
    assert front.run("uninstall") == 0
    assert front.oned.read_bytes() == front.original[front.oned]
    assert front.execrc.read_bytes() == front.original[front.execrc]


def test_doctor_runs_the_backends_own_checks(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(plan, "known_drivers", lambda: ["toy"])
    conf, auth = tmp_path / "one-tweaks.conf", tmp_path / "one_auth"
    conf.write_text("TOY_POOL=from-conf\n")
    auth.write_text("oneadmin:doctor\n")
    monkeypatch.setenv("ONE_TWEAKS_CONF", str(conf))
    monkeypatch.setenv("ONE_AUTH", str(auth))
    front = Front(tmp_path / "front", "7.2")
    with oned_sim.OnedDouble(auth="oneadmin:doctor") as oned:
        monkeypatch.setenv("ONE_XMLRPC", oned.url)
        oned.add_datastore(_datastore({"TOY_SIZE": "big"}))
        oned.add_datastore(oned_sim.datastore_document(101, "files", ds_mad="fs", tm_mad="ssh"))
        capsys.readouterr()
        rc = front.run("doctor", "--skip", "oned,vmm,restricted,execrc,scripts,libvirt,rules")
    lines = capsys.readouterr().out.splitlines()
    assert rc == 1 and lines == [
        "api: datastore 100 (toy-images): TOY_SIZE='big' is not a whole number: fix it with onedatastore update",
        "api: toy checked 1 datastore(s) with TOY_POOL=from-conf"]


# --- capabilities ------------------------------------------------------------------------------


def test_vm_snapshots_follow_the_capability(toy: Path) -> None:
    assert registry.backend_class("toy").group_snapshots is False
    assert registry.backend_class("storpool").group_snapshots and registry.backend_class("linstor_un").group_snapshots
    for driver in ("storpool", "linstor_un"):
        cls = registry.backend_class(driver)
        assert cls.nvram_volumes and cls.disk_form == "block"


# --- facts for the tweak rules -----------------------------------------------------------------


VM = """<VM><ID>42</ID><TEMPLATE>
  <DISK><DISK_ID>0</DISK_ID><TM_MAD>storpool</TM_MAD><SOURCE>one-img-1</SOURCE></DISK>
  <DISK><DISK_ID>1</DISK_ID><TYPE>fs</TYPE><SIZE>64</SIZE></DISK>
  <DISK><DISK_ID>2</DISK_ID><TM_MAD>ssh</TM_MAD><SOURCE>/x</SOURCE></DISK>
  <CONTEXT><DISK_ID>3</DISK_ID><TARGET>hda</TARGET></CONTEXT>
</TEMPLATE><HISTORY_RECORDS><HISTORY><DS_ID>101</DS_ID><TM_MAD>{tm}</TM_MAD></HISTORY></HISTORY_RECORDS></VM>"""

DOMAIN = """<domain type="kvm"><name>one-42</name><memory>65536</memory>
<os><type arch="x86_64" machine="pc">hvm</type></os><devices>
  <disk type="file" device="disk"><source file="/var/lib/one//datastores/101/42/disk.1"/><target dev="vdb"/></disk>
  <disk type="file" device="cdrom"><source file="/var/lib/one//datastores/101/42/disk.3"/><target dev="hda"/></disk>
</devices></domain>"""


def test_storage_facts_come_from_the_declarations(toy: Path) -> None:
    vm = etree.fromstring(VM.format(tm="toy"))
    system = oned_sim.datastore_document(101, "toy-system", ds_type="SYSTEM_DS", tm_mad="toy",
                                         attrs={"TOY_POOL": "fast"})
    scalars, disks = storage_facts(vm, system)
    assert scalars["storage.tm_mads"] == "linstor_un,rbd,storpool,toy"
    assert scalars["storage.block_tm_mads"] == "linstor_un,storpool"
    assert scalars["storage.network_tm_mads"] == "rbd,toy"
    assert scalars["system_ds.ID"] == "101" and scalars["system_ds.TM_MAD"] == "toy"
    assert scalars["system_ds.TOY_POOL"] == "fast"
    # image disk 0 on storpool, volatile disk 1 and the context (3) on the toy system datastore,
    # which describes its network disks itself (Backend.facts; only storage_* keys are taken)
    assert disks == {"0": {"storage_form": "block"}, "1": {"storage_form": "network", "storage_volume": "toy-1"},
                     "3": {"storage_form": "network", "storage_volume": "toy-3"}}
    assert scalars["storage.toy_pool"] == "pool0"


@pytest.mark.parametrize(("tm", "supplied", "block"), [
    ("storpool", "storpool", True),      # what the storage side says is a block TM_MAD
    ("storpool", "linstor_un", False),   # the engine has no list of its own
    ("ssh", "storpool,ssh", True),
])
def test_block_disk_rules_follow_the_supplied_facts(tm: str, supplied: str, block: bool) -> None:
    rules = [r for r in load([]).rules if r.name in ("volatile-block", "context-block")]
    assert len(rules) == 2
    outcome = engine.apply_rules(etree.ElementTree(etree.fromstring(DOMAIN)),
                                 etree.ElementTree(etree.fromstring(VM.format(tm=tm))), rules,
                                 supplied=({"storage.block_tm_mads": supplied}, {}))
    types = [d.get("type") for d in outcome.tree.getroot().iterfind("devices/disk")]
    assert types == (["block", "block"] if block else ["file", "file"])


def test_one_tweaks_apply_asks_the_storage_side(tmp_path: Path) -> None:
    """Without supplied facts (``one-tweaks apply``) the ``one_tweaks.facts`` entry point
    answers: the storpool volatile disk and context CD-ROM become block devices."""
    (tmp_path / "d.xml").write_text(DOMAIN)
    (tmp_path / "vm.xml").write_text(VM.format(tm="storpool"))
    proc = subprocess.run([sys.executable, "-m", "tweaks", "apply", str(tmp_path / "d.xml"), "--vm",
                           str(tmp_path / "vm.xml")], capture_output=True, text=True, check=True)
    root = etree.fromstring(proc.stdout.encode())
    assert [d.get("type") for d in root.iterfind("devices/disk")] == ["block", "block"]


def test_the_rule_cache_remembers_the_supplier_until_a_distribution_changes(tmp_path: Path) -> None:
    """The rule cache keeps the ``one_tweaks.facts`` target it found (no scan of the installed
    distributions per deploy) for as long as the directories they live in are unchanged."""
    plugins_dir, cache, cwd = tmp_path / "plugins", tmp_path / "cache", tmp_path / "cwd"
    plugins_dir.mkdir()
    cwd.mkdir()  # sys.path[0] of ``python -m``: a directory nothing else writes to
    (tmp_path / "d.xml").write_text(DOMAIN)
    (tmp_path / "vm.xml").write_text(VM.format(tm="storpool"))
    env = dict(os.environ, ONE_TWEAKS_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join([str(plugins_dir), *filter(None, [os.environ.get("PYTHONPATH")])]))

    def disk_types() -> list[str | None]:
        proc = subprocess.run([sys.executable, "-m", "tweaks", "apply", str(tmp_path / "d.xml"), "--vm",
                               str(tmp_path / "vm.xml")], capture_output=True, text=True, check=True, env=env,
                              cwd=cwd)
        return [d.get("type") for d in etree.fromstring(proc.stdout.encode()).iterfind("devices/disk")]

    assert disk_types() == ["block", "block"]
    assert marshal.loads((cache / "rules.cache").read_bytes())["entry_points"] == {
        "one_tweaks.facts": "datastore.facts:supplier"}
    # a distribution that supplies other facts, found first on sys.path
    before = plugins_dir.stat()
    (plugins_dir / "other_facts.py").write_text(
        "def supplier(vm, domain):\n    return {'storage.block_tm_mads': 'none_of_these'}, {}\n")
    (plugins_dir / "other_facts-1.0.dist-info").mkdir()
    (plugins_dir / "other_facts-1.0.dist-info" / "entry_points.txt").write_text(
        "[one_tweaks.facts]\nother = other_facts:supplier\n")
    os.utime(plugins_dir, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert disk_types() == ["block", "block"], "the directory looks unchanged: the remembered supplier"
    os.utime(plugins_dir)  # as installing really leaves it
    assert disk_types() == ["file", "file"], "a new distribution: the cache is rebuilt, the scan finds it"
    assert marshal.loads((cache / "rules.cache").read_bytes())["entry_points"] == {
        "one_tweaks.facts": "other_facts:supplier"}


# --- no backend named outside its module -------------------------------------------------------


def test_no_code_outside_the_backends_names_one() -> None:
    """Outside datastore/backends/ no string in the drivers' code (docstrings aside) names
    StorPool or LINSTOR: what differs between backends is asked of the backend."""
    import io
    import re
    import tokenize

    named = re.compile(r"storpool|linstor", re.IGNORECASE)
    found = []
    for top in ("onelib", "datastore", "tm", "vmm"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.is_relative_to(ROOT / "datastore" / "backends"):
                continue
            tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
            for i, tok in enumerate(tokens):
                if tok.type != tokenize.STRING or not named.search(tok.string):
                    continue
                j = i - 1
                while j >= 0 and tokens[j].type in (tokenize.NL, tokenize.COMMENT):
                    j -= 1
                if j < 0 or tokens[j].type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING):
                    continue  # a docstring
                found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: {tok.string}")
    assert found == []


def test_every_shipped_backend_is_read_as_its_class_says() -> None:
    for driver, (module, form) in registry.index().items():
        cls = registry.backend_class(driver)
        assert (cls.__module__, cls.driver, cls.disk_form) == (f"datastore.backends.{module}", driver, form)
