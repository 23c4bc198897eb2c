"""one-tweaks install / doctor / uninstall on copies of OpenNebula's stock 6.10 and 7.2
configuration files (tests/fixtures/opennebula/etc), with real executables that run."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ONE, ROOT

from onelib.install import cli, plan, template
from onelib.install import patch as patcher

STOCK = ONE / "etc"
VERSIONS = ["6.10", "7.2"]
T_ATTRS = [name for name, _ in plan.RESTRICTED_T_ATTRS]


def actions_in(package: str) -> list[str]:
    """Independent of the installer: the action modules as files on disk."""
    d = ROOT / package / "actions"
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.py") if not p.name.startswith("_"))


def vmm_available() -> dict[str, str]:
    """-l key -> our script name for every VMM override whose module exists on disk."""
    have = set(actions_in("vmm"))
    return {key: script for key, modules, script in plan.VMM_OVERRIDES if any(m in have for m in modules)}


def vmm_missing() -> list[str]:
    avail = vmm_available()
    return [key for key, _, _ in plan.VMM_OVERRIDES if key not in avail]


class Front:
    """A front-end's files in a tmp dir: etc/oned.conf, etc/vmm_execrc, remotes/."""

    def __init__(self, root: Path, version: str) -> None:
        self.root, self.version = root, version
        self.etc = root / "etc"
        self.etc.mkdir(parents=True)
        for name in ("oned.conf", "vmm_execrc", "vmm_exec_kvm.conf", "kvmrc"):
            shutil.copyfile(STOCK / version / name, self.etc / name)
        self.oned = self.etc / "oned.conf"
        self.execrc = self.etc / "vmm_execrc"
        self.remotes = root / "remotes"
        self.original = {p: p.read_bytes() for p in (self.oned, self.execrc)}

    @property
    def opts(self) -> list[str]:
        return ["--remotes", str(self.remotes), "--oned-conf", str(self.oned), "--vmm-execrc", str(self.execrc)]

    def run(self, command: str, *extra: str) -> int:
        main = {"install": cli.install_main, "uninstall": cli.uninstall_main, "doctor": cli.doctor_main}[command]
        return main([*self.opts, *extra])

    def attrs(self) -> list[template.Attr]:
        return template.parse(self.oned.read_text(encoding="utf-8"))

    def option(self, what: str, flag: str, **select: str) -> list[str]:
        (vector,) = template.find(self.attrs(), what, **select)
        args = vector.text_of("ARGUMENTS") or ""
        opt = template.find_option(args, flag, "--unused")
        return template.split_list(opt.value if opt else None)

    def snapshot(self) -> dict[str, tuple[str, int]]:
        """sha256 and mtime of every file under root (state and backups included)."""
        out = {}
        for p in sorted(self.root.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(self.root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        return out

    def scripts(self) -> list[Path]:
        return sorted(p for p in self.remotes.rglob("*") if p.is_file()) if self.remotes.exists() else []


@pytest.fixture(autouse=True)
def one_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most tests spell out what install does for one driver (storpool); the ones about
    several drivers set their own list. The real list (every backend) is checked apart."""
    if "linstor_un" in plan.known_drivers():
        monkeypatch.setattr(plan, "known_drivers", lambda: ["storpool"])


@pytest.fixture(params=VERSIONS)
def front(request: pytest.FixtureRequest, tmp_path: Path) -> Front:
    return Front(tmp_path, request.param)


@pytest.fixture
def front72(tmp_path: Path) -> Front:
    return Front(tmp_path, "7.2")


def stock_option(version: str, what: str, flag: str, **select: str) -> list[str]:
    (vector,) = template.find(template.parse((STOCK / version / "oned.conf").read_text(encoding="utf-8")),
                              what, **select)
    opt = template.find_option(vector.text_of("ARGUMENTS") or "", flag, "--unused")
    return template.split_list(opt.value if opt else None)


# --- install -----------------------------------------------------------------------------


def test_install_patches_exactly_the_lists_and_blocks(front: Front, capsys: pytest.CaptureFixture[str]) -> None:
    version = front.version
    assert front.run("install") == 0

    assert front.option("TM_MAD", "-d") == [*stock_option(version, "TM_MAD", "-d"), "storpool"]
    assert front.option("DATASTORE_MAD", "-d") == [*stock_option(version, "DATASTORE_MAD", "-d"), "storpool"]
    assert front.option("DATASTORE_MAD", "-s") == [*stock_option(version, "DATASTORE_MAD", "-s"), "storpool"]
    local = front.option("VM_MAD", "-l", NAME="kvm")
    assert local == [f"{k}={v}" for k, v in vmm_available().items()]
    assert "attach_nic=attach_nic-tweaks" in local, "hot-plugged NICs get the rules too"
    assert (front.remotes / "vmm" / "kvm" / "attach_nic-tweaks").is_file()
    # the other VM_MADs are left alone
    assert front.option("VM_MAD", "-l", NAME="qemu") == []

    attrs = front.attrs()
    (tm_conf,) = template.find(attrs, "TM_MAD_CONF", NAME="storpool")
    assert [(p.key, p.value.text) for p in tm_conf.pairs or ()] == [
        ("NAME", "storpool"), ("LN_TARGET", "NONE"), ("CLONE_TARGET", "SELF"), ("SHARED", "YES"),
        ("DS_MIGRATE", "YES"), ("DRIVER", "raw"), ("ALLOW_ORPHANS", "YES")]
    (ds_conf,) = template.find(attrs, "DS_MAD_CONF", NAME="storpool")
    assert [(p.key, p.value.text) for p in ds_conf.pairs or ()] == [
        ("NAME", "storpool"), ("REQUIRED_ATTRS", "DISK_TYPE"), ("PERSISTENT_ONLY", "NO"),
        ("MARKETPLACE_ACTIONS", "export")]
    # the new blocks sit with their kind, after the last stock one
    names = [a.name for a in attrs]
    assert names.index("TM_MAD_CONF") < names.index("DS_MAD_CONF")
    tm_confs = template.find(attrs, "TM_MAD_CONF")
    assert tm_confs[-1].text_of("NAME") == "storpool"
    assert attrs.index(tm_confs[-1]) == attrs.index(tm_confs[-2]) + 1

    restricted = [a.value.text for a in template.find(attrs, "VM_RESTRICTED_ATTR") if a.value]
    stock_restricted = [a.value.text for a in template.find(template.parse(
        front.original[front.oned].decode()), "VM_RESTRICTED_ATTR") if a.value]
    assert restricted == stock_restricted + T_ATTRS
    for must in ("T_OS_LOADER", "T_OS_NVRAM", "T_UUID", "T_VF_MACS", "T_CPUTUNE_SHARES", "T_CPUTUNE_QUOTA",
                 "T_MEMORY_MAX"):
        assert must in restricted
    assert "SP_QOSCLASS" in [a.value.text for a in template.find(attrs, "IMAGE_RESTRICTED_ATTR") if a.value]

    words = patcher.live_snapshot_words(front.execrc.read_text())
    assert words == [*(patcher.live_snapshot_words(front.original[front.execrc].decode()) or []), "kvm-storpool"]

    # nothing else in oned.conf changed: the only lines taken out are the ARGUMENTS lines
    before = front.original[front.oned].decode().splitlines()
    after = front.oned.read_text(encoding="utf-8").splitlines()
    removed = [ln[1:] for ln in difflib.unified_diff(before, after, lineterm="", n=0)
               if ln.startswith("-") and not ln.startswith("---")]
    assert all(ln.strip().startswith("ARGUMENTS") for ln in removed)
    assert len(removed) == (3 if vmm_available() else 2)
    assert (front.etc / "vmm_exec_kvm.conf").read_bytes() == (STOCK / version / "vmm_exec_kvm.conf").read_bytes()


def test_second_install_changes_nothing(front: Front, capsys: pytest.CaptureFixture[str]) -> None:
    assert front.run("install") == 0
    first = front.snapshot()
    capsys.readouterr()
    assert front.run("install") == 0
    assert front.snapshot() == first  # same bytes, same mtimes: nothing rewritten, no new backup
    assert "nothing to change" in capsys.readouterr().out


def test_backup_is_the_original(front72: Front) -> None:
    assert front72.run("install") == 0
    assert (front72.etc / "oned.conf.one-tweaks.bak").read_bytes() == front72.original[front72.oned]
    assert (front72.etc / "vmm_execrc.one-tweaks.bak").read_bytes() == front72.original[front72.execrc]


def test_dry_run_prints_a_diff_and_changes_nothing(front72: Front, capsys: pytest.CaptureFixture[str]) -> None:
    before = front72.snapshot()
    assert front72.run("install", "--dry-run") == 0
    out = capsys.readouterr().out
    assert front72.snapshot() == before
    assert not front72.remotes.exists()
    assert not (front72.root / "one-tweaks-install").exists()
    assert f"--- {front72.oned}\n+++ {front72.oned} (one-tweaks install)\n" in out
    assert "\n+    ARGUMENTS = \"-t 15 -d dummy,lvm,shared,fs_lvm,fs_lvm_ssh,qcow2,ssh,local,ceph,dev," \
           "iscsi_libvirt,netapp,purefa,storpool\"\n" in out
    assert '\n+    NAME = "storpool",\n' in out
    assert '\n+VM_RESTRICTED_ATTR = "T_UUID"\n' in out
    assert f"--- {front72.execrc}\n" in out and "kvm-storpool\"\n" in out
    assert f"would write {front72.remotes}/tm/storpool/mkimage\n" in out


def test_dry_run_after_install_says_nothing_to_change(front72: Front, capsys: pytest.CaptureFixture[str]) -> None:
    assert front72.run("install") == 0
    capsys.readouterr()
    assert front72.run("install", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "nothing to change" in out and "---" not in out


# --- executables -------------------------------------------------------------------------


def test_scripts_run_with_this_venv_whatever_python3_is_on_path(front72: Front, tmp_path: Path) -> None:
    front72.remotes.mkdir()
    os.chown(front72.remotes, 4321, 4322)  # "oneadmin": scripts and new dirs are owned like the remotes dir
    assert front72.run("install") == 0

    expected = {f"tm/storpool/{a}" for a in actions_in("tm")} | {f"datastore/storpool/{a}"
                                                                  for a in actions_in("datastore")}
    expected |= {f"vmm/kvm/{s}" for s in vmm_available().values()}
    installed = {str(p.relative_to(front72.remotes)) for p in front72.scripts()}
    assert expected <= installed
    assert "tm/storpool/monitor" in installed  # the system datastore's monitor
    for path in front72.scripts():
        lines = path.read_text().splitlines()
        assert lines[0] == f"#!{sys.executable}"
        assert lines[1] in cli.OUR_ENTRIES
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o755
        assert (st.st_uid, st.st_gid) == (4321, 4322)
    assert (front72.remotes / "tm/storpool/mkimage").read_text() == \
        f"#!{sys.executable}\nfrom tm.entry import tm_main\ntm_main()\n"
    assert (front72.remotes / "datastore/storpool/cp").read_text() == \
        f"#!{sys.executable}\nfrom datastore.entry import ds_main\nds_main()\n"
    for d in ("tm", "tm/storpool", "datastore/storpool"):
        st = (front72.remotes / d).stat()
        assert (st.st_uid, st.st_gid) == (4321, 4322)

    # a python3 on PATH that would fail: the scripts never use it
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\necho wrong python >&2\nexit 99\n")
    (fake / "python3").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "LANG": "C"}
    proc = subprocess.run([str(front72.remotes / "tm/storpool/mkimage"), "not-a-size"], env=env, cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "size" in proc.stderr and "wrong python" not in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([str(front72.remotes / "datastore/storpool/stat")], env=env, cwd="/",
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and len(proc.stderr.splitlines()) == 1, proc.stderr


# --- uninstall ---------------------------------------------------------------------------


def test_uninstall_restores_byte_identical(front: Front, capsys: pytest.CaptureFixture[str]) -> None:
    assert front.run("install") == 0
    assert front.oned.read_bytes() != front.original[front.oned]
    assert front.run("uninstall", "--dry-run") == 0
    assert front.scripts()  # dry run removed nothing
    assert front.run("uninstall") == 0
    assert front.oned.read_bytes() == front.original[front.oned]
    assert front.execrc.read_bytes() == front.original[front.execrc]
    assert front.scripts() == []
    assert list(front.remotes.iterdir()) == []  # the directories install made are gone too
    assert not (front.root / "one-tweaks-install").exists()
    assert front.run("uninstall") == 1  # nothing left to uninstall
    assert "nothing to uninstall" in capsys.readouterr().err


def addon_storpool_front(front: Front) -> dict[str, bytes]:
    """A front-end already set up by addon-storpool: its lines in oned.conf, its bash
    scripts in remotes (same driver name)."""
    text = front.oned.read_text(encoding="utf-8")
    attrs = template.parse(text)
    (kvm,) = template.find(attrs, "VM_MAD", NAME="kvm")
    value = kvm.get("ARGUMENTS")
    assert value is not None
    text = (text[:value.start] + '"-l deploy=deploy-tweaks,save=tmsave,restore=tmrestore,'
            'attach_disk=attach_disk.storpool -t 15 -r 0 kvm -p"' + text[value.end:])
    for what in ("TM_MAD", "DATASTORE_MAD"):
        (vector,) = template.find(template.parse(text), what)
        value = vector.get("ARGUMENTS")
        assert value is not None
        args = value.text.replace(" -s ", ",storpool -s ") + ",storpool"
        text = text[:value.start] + template.quote(args) + text[value.end:]
    text += ('\nTM_MAD_CONF = [\n    NAME = "storpool", LN_TARGET = "NONE", CLONE_TARGET = "SELF", SHARED = "yes",\n'
             '    DS_MIGRATE = "yes", DRIVER = "raw", ALLOW_ORPHANS = "yes"\n]\n'
             'DS_MAD_CONF = [\n    NAME = "storpool", REQUIRED_ATTRS = "DISK_TYPE", PERSISTENT_ONLY = "NO",\n'
             '    MARKETPLACE_ACTIONS = "export"\n]\nVM_RESTRICTED_ATTR = "T_UUID"\n')
    front.oned.write_text(text, encoding="utf-8")
    front.original[front.oned] = front.oned.read_bytes()
    theirs = {}
    for rel in ("tm/storpool/clone", "tm/storpool/storpool_common.sh", "datastore/storpool/cp",
                "vmm/kvm/deploy-tweaks", "vmm/kvm/tmsaverestore", "vmm/kvm/deploy"):
        p = front.remotes / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"#!/bin/bash\n# addon-storpool {rel}\n".encode())
        p.chmod(0o750)
        os.chown(p, 4321, 4322)
        theirs[rel] = p.read_bytes()
    for alias in ("tmsave", "tmrestore"):  # addon-storpool links them to tmsaverestore
        (front.remotes / "vmm/kvm" / alias).symlink_to("tmsaverestore")
    (front.remotes / "tm/storpool/mkswap").symlink_to("storpool_common.sh")  # install must not write through
    return theirs


def test_switch_over_from_addon_storpool_and_back(front72: Front, capsys: pytest.CaptureFixture[str]) -> None:
    theirs = addon_storpool_front(front72)
    assert front72.run("install") == 0
    attrs = front72.attrs()
    assert len(template.find(attrs, "TM_MAD_CONF", NAME="storpool")) == 1  # theirs kept, not doubled
    assert len(template.find(attrs, "DS_MAD_CONF", NAME="storpool")) == 1
    assert front72.option("TM_MAD", "-d").count("storpool") == 1
    assert [a.value.text for a in template.find(attrs, "VM_RESTRICTED_ATTR") if a.value].count("T_UUID") == 1
    local = dict(template.parse_actions(",".join(front72.option("VM_MAD", "-l", NAME="kvm"))))
    if "deploy" in vmm_available():
        assert local["deploy"] == "deploy-tweaks"
        assert (front72.remotes / "vmm/kvm/deploy-tweaks").read_bytes() != theirs["vmm/kvm/deploy-tweaks"]
    if "save" not in vmm_available():
        assert local["save"] == "tmsave"  # not ours to change yet
    # theirs replaced by ours, their helper library untouched
    assert (front72.remotes / "tm/storpool/clone").read_text().splitlines()[1] == "from tm.entry import tm_main"
    assert (front72.remotes / "tm/storpool/storpool_common.sh").read_bytes() == theirs["tm/storpool/storpool_common.sh"]
    assert (front72.remotes / "vmm/kvm/deploy").read_bytes() == theirs["vmm/kvm/deploy"]  # stock name: never ours
    mkswap = front72.remotes / "tm/storpool/mkswap"
    assert not mkswap.is_symlink() and mkswap.read_text().splitlines()[1] == "from tm.entry import tm_main"

    assert front72.run("uninstall") == 0
    assert front72.oned.read_bytes() == front72.original[front72.oned]
    assert front72.execrc.read_bytes() == front72.original[front72.execrc]
    for rel, data in theirs.items():
        p = front72.remotes / rel
        assert p.read_bytes() == data, rel
        st = p.lstat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 4321, 4322)
    for alias in ("tmsave", "tmrestore"):
        assert os.readlink(front72.remotes / "vmm/kvm" / alias) == "tmsaverestore"
    assert os.readlink(front72.remotes / "tm/storpool/mkswap") == "storpool_common.sh"
    leftovers = {str(p.relative_to(front72.remotes)) for p in front72.remotes.rglob("*") if not p.is_dir()}
    assert leftovers == {*theirs, "vmm/kvm/tmsave", "vmm/kvm/tmrestore", "tm/storpool/mkswap"}


def test_uninstall_after_the_operator_edited_oned_conf(front72: Front, capsys: pytest.CaptureFixture[str]) -> None:
    assert front72.run("install") == 0
    text = front72.oned.read_text(encoding="utf-8")
    text = text.replace("purefa,storpool\"", "purefa,storpool,linstor\"", 1)  # TM_MAD -d gets another driver
    text = text.replace('DS_MIGRATE = "YES",\n    DRIVER', 'DS_MIGRATE = "NO",\n    DRIVER', 1)  # tuned our block
    front72.oned.write_text(text, encoding="utf-8")
    assert front72.run("uninstall") == 0
    assert "edited" in capsys.readouterr().err
    assert front72.option("TM_MAD", "-d") == [*stock_option("7.2", "TM_MAD", "-d"), "linstor"]
    attrs = front72.attrs()
    assert not template.find(attrs, "TM_MAD_CONF", NAME="storpool")
    assert not template.find(attrs, "DS_MAD_CONF", NAME="storpool")
    assert front72.option("DATASTORE_MAD", "-s") == stock_option("7.2", "DATASTORE_MAD", "-s")
    # exactly the operator's edits remain
    expected = front72.original[front72.oned].decode().replace("netapp,purefa\"\n]", "netapp,purefa,linstor\"\n]", 1)
    got = front72.oned.read_text(encoding="utf-8")
    assert "one-tweaks" not in got
    assert re.sub(r"\n\n\n+", "\n\n", got) == re.sub(r"\n\n\n+", "\n\n", expected)  # a blank line may stay


def test_uninstall_refuses_another_oned_conf(front72: Front, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert front72.run("install") == 0
    other = tmp_path / "other.conf"
    other.write_text("")
    assert cli.uninstall_main(["--remotes", str(front72.remotes), "--oned-conf", str(other)]) == 1
    assert "install patched" in capsys.readouterr().err
    assert front72.scripts()


# --- oned.conf forms -----------------------------------------------------------------------

MINI = """# a small oned.conf
TM_MAD = [ EXECUTABLE = "one_tm", ARGUMENTS = "-t 15 -dssh,shared" ]   # attached value
DATASTORE_MAD=[executable="one_datastore",arguments="-t 15 --ds-types=fs,ceph"]
VM_MAD = [
    NAME = "kvm",   # comment inside a vector
    ARGUMENTS = "-l migrate=migrate_local -t 15 -r 0 kvm",
    DEFAULT = "vmm_exec/vmm_exec_kvm.conf"
]
VM_ADMIN_OPERATIONS = "migrate, delete,
    backup"
SCRIPTS_REMOTE_DIR=/var/tmp/one"""


def test_template_forms_and_minimal_edits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    attrs = template.parse(MINI)
    assert [a.name for a in attrs] == ["TM_MAD", "DATASTORE_MAD", "VM_MAD", "VM_ADMIN_OPERATIONS", "SCRIPTS_REMOTE_DIR"]
    assert attrs[1].text_of("ARGUMENTS") == "-t 15 --ds-types=fs,ceph"
    assert attrs[4].value is not None and attrs[4].value.text == "/var/tmp/one"
    front = Front(tmp_path, "7.2")
    front.oned.write_text(MINI)
    front.original[front.oned] = MINI.encode()
    assert front.run("install") == 0
    text = front.oned.read_text()
    assert '"-t 15 -dssh,shared,storpool" ]   # attached value\n' in text
    # -s was absent (one_datastore.rb then uses shared,ssh,ceph): those are kept
    assert 'arguments="-t 15 --ds-types=fs,ceph,storpool -s shared,ssh,ceph,storpool"]' in text
    local = dict(template.parse_actions(",".join(front.option("VM_MAD", "-l", NAME="kvm"))))
    assert local == {"migrate": "migrate_local", **vmm_available()}
    # none of these existed: appended at the end (after a newline the file lacked), in this order
    assert text.startswith(MINI.split("TM_MAD = [")[0])
    tail = text[text.index("SCRIPTS_REMOTE_DIR=/var/tmp/one\n"):]
    marks = ['TM_MAD_CONF = [\n    NAME = "storpool"', 'DS_MAD_CONF = [\n    NAME = "storpool"',
             'VM_RESTRICTED_ATTR = "T_OS_LOADER"', 'IMAGE_RESTRICTED_ATTR = "SP_QOSCLASS"']
    assert [tail.count(m) for m in marks] == [1, 1, 1, 1]
    assert [tail.index(m) for m in marks] == sorted(tail.index(m) for m in marks)
    assert front.run("install") == 0
    assert front.oned.read_text() == text
    assert front.run("uninstall") == 0
    assert front.oned.read_bytes() == MINI.encode()


@pytest.mark.parametrize("broken", ['TM_MAD = [ ARGUMENTS = "-d x" \n', 'A = "open\n', "= 3\n", "TM_MAD [ x = 1 ]\n"])
def test_broken_oned_conf_is_one_line_and_nothing_changes(front72: Front, broken: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    front72.oned.write_text(front72.oned.read_text() + broken)
    before = front72.snapshot()
    assert front72.run("install") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert re.search(rf"{re.escape(str(front72.oned))}:14[0-9]{{2}}: ", err), err
    assert front72.snapshot() == before
    assert not front72.remotes.exists()


def test_option_helpers() -> None:
    assert template.find_option("-t 15 -d a,b -s c", "-d", "--ds-types") == template.Option("a,b", 6, 12, 9, 12)
    assert template.set_option("-t 15 -da,b", "-d", "--x", "a,b,c") == "-t 15 -da,b,c"
    assert template.set_option("-t 15", "-s", "--x", "c") == "-t 15 -s c"
    assert template.drop_option("-t 15 -s c -w 3", "-s", "--x") == "-t 15 -w 3"
    assert template.parse_actions("deploy=deploy-tweaks,save") == [("deploy", "deploy-tweaks"), ("save", None)]


def test_a_second_driver_is_installed_alongside(front72: Front, monkeypatch: pytest.MonkeyPatch) -> None:
    """linstor_un comes with its own settings, declared by its backend module."""
    monkeypatch.setattr(plan, "known_drivers", lambda: ["linstor_un", "storpool"])
    assert front72.run("install") == 0
    assert front72.option("TM_MAD", "-d")[-2:] == ["linstor_un", "storpool"]
    assert front72.option("DATASTORE_MAD", "-s")[-2:] == ["linstor_un", "storpool"]
    (tm_conf,) = template.find(front72.attrs(), "TM_MAD_CONF", NAME="linstor_un")
    assert tm_conf.text_of("CLONE_TARGET") == "SELF" and tm_conf.text_of("SHARED") == "YES"
    assert (front72.remotes / "tm/linstor_un/monitor").exists()
    assert "kvm-linstor_un kvm-storpool" in front72.execrc.read_text()
    assert front72.run("uninstall") == 0
    assert front72.oned.read_bytes() == front72.original[front72.oned]


def test_every_known_driver_has_settings() -> None:
    assert plan.drivers() == ["storpool"] or set(plan.drivers()) <= set(plan.DRIVER_CONF)
    assert "storpool" in plan.known_drivers()


def test_installer_imports_no_driver_code() -> None:
    probe = ("import sys; from onelib.install import cli, plan, doctor; plan.build(); "
             "print([m for m in sys.modules if m.split('.')[0] in ('tm', 'datastore', 'vmm', 'tweaks')])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_commands_are_registered() -> None:
    for command in ("install", "uninstall", "doctor"):
        proc = subprocess.run([sys.executable, "-m", "tweaks", command, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and f"one-tweaks {command}" in proc.stdout, proc.stderr


# --- doctor ------------------------------------------------------------------------------


def doctor_lines(front: Front, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = front.run("doctor", *extra)
    return rc, capsys.readouterr().out.splitlines()


def expected_vmm_lines(installed: bool) -> list[str]:
    lines = [f"one-tweaks: this build has no VMM override for {key} " for key in vmm_missing()]
    if not installed:
        lines += [f"oned.conf: VM_MAD kvm ARGUMENTS -l: {key} is not local" for key in vmm_available()]
    return lines


def test_doctor_lists_every_missing_piece_of_stock_72(front72: Front, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = doctor_lines(front72, capsys, "--offline")
    assert rc == 1
    tm = len(actions_in("tm"))
    ds = len(actions_in("datastore"))
    expected = [
        'oned.conf: TM_MAD ARGUMENTS -d does not list storpool: every transfer of a storpool disk fails with '
        '"driver not available"',
        "oned.conf: DATASTORE_MAD ARGUMENTS -d does not list storpool: storpool image datastores fail with "
        "\"Datastore driver 'storpool' not available\"",
        "oned.conf: DATASTORE_MAD ARGUMENTS -s list does not have storpool",
        'oned.conf: no TM_MAD_CONF for storpool: oned does not know how to use storpool datastores; add TM_MAD_CONF = '
        '[ NAME = "storpool", LN_TARGET = "NONE", CLONE_TARGET = "SELF", SHARED = "YES", DS_MIGRATE = "YES", '
        'DRIVER = "raw", ALLOW_ORPHANS = "YES" ]',
        'oned.conf: no DS_MAD_CONF for storpool',
        "oned.conf: VM_RESTRICTED_ATTR lacks " + ", ".join(T_ATTRS) + ":",
        "oned.conf: IMAGE_RESTRICTED_ATTR lacks SP_QOSCLASS:",
        "vmm_execrc: LIVE_DISK_SNAPSHOTS lacks kvm-storpool:",
        f"remotes: scripts not installed: {tm} in {front72.remotes}/tm/storpool (",
        f"remotes: scripts not installed: {ds} in {front72.remotes}/datastore/storpool (",
        *expected_vmm_lines(installed=False),
    ]
    vmm_scripts = [k for k in plan.build().scripts if k.startswith("vmm/kvm/")]
    assert len(vmm_scripts) >= len(vmm_available())
    if vmm_scripts:
        expected.append(f"remotes: scripts not installed: {len(vmm_scripts)} in {front72.remotes}/vmm/kvm (")
    for prefix in expected:
        assert sum(line.startswith(prefix) for line in lines) == 1, (prefix, lines)
    assert len(lines) == len(expected), lines
    assert all(("install" in line or "chmod" in line) for line in lines)  # each says how to fix it


def test_doctor_is_healthy_after_install(front: Front, capsys: pytest.CaptureFixture[str]) -> None:
    assert front.run("install") == 0
    rc, lines = doctor_lines(front, capsys, "--offline")
    expected = expected_vmm_lines(installed=True)
    assert len(lines) == (len(expected) or 1), lines
    for prefix in expected:
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)
    assert rc == (1 if expected else 0)
    rc, lines = doctor_lines(front, capsys, "--offline", "--skip", "vmm")
    assert rc == 0 and lines == ["one-tweaks doctor: healthy (oned, restricted, execrc, scripts, libvirt, rules "
                                 "checked)"]


def test_doctor_finds_broken_scripts(front72: Front, capsys: pytest.CaptureFixture[str]) -> None:
    assert front72.run("install") == 0
    r = front72.remotes
    (r / "tm/storpool/clone").chmod(0o644)
    (r / "tm/storpool/ln").write_text("#!/usr/bin/env python3\nfrom tm.entry import tm_main\ntm_main()\n")
    (r / "tm/storpool/ln").chmod(0o755)
    (r / "datastore/storpool/cp").unlink()
    rc, lines = doctor_lines(front72, capsys, "--offline", "--skip", "vmm,rules")
    assert rc == 1
    assert lines == [
        f"remotes: scripts not installed: 1 in {r}/datastore/storpool (cp): oned fails these actions; "
        "run one-tweaks install",
        f"remotes: scripts not executable: 1 in {r}/tm/storpool (clone): run one-tweaks install (or chmod 755 them)",
        "remotes: scripts with the wrong interpreter '/usr/bin/env python3' (the system python3 cannot import the "
        f"package: Debian 12 forbids installing it there, PEP 668): 1 in {r}/tm/storpool (ln): they must run "
        f"{sys.executable}; run one-tweaks install",
    ]
    assert front72.run("install") == 0
    rc, lines = doctor_lines(front72, capsys, "--offline", "--skip", "vmm,rules")
    assert rc == 0, lines


def test_doctor_reports_missing_libvirt_schema_and_bad_rules(front72: Front, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "90-broken.yaml").write_text("name: broken\ntweaks:\n  - no_such_tweak: {}\n")
    monkeypatch.setenv("ONE_TWEAKS_RULES_DIR", str(rules))
    monkeypatch.setenv("ONE_TWEAKS_DOMAIN_RNG", str(tmp_path / "nowhere/domain.rng"))
    rc, lines = doctor_lines(front72, capsys, "--offline", "--skip", "oned,vmm,restricted,execrc,scripts")
    assert rc == 1
    assert lines[0].startswith(f"libvirt: schema {tmp_path}/nowhere/domain.rng missing:")
    assert len(lines) >= 2 and all(line.startswith("rules: ") for line in lines[1:])
    assert any("90-broken.yaml" in line for line in lines[1:]), lines


def test_doctor_contacts_the_storage_api(front72: Front, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from sim.storpool import StorPoolSim

    skip = ["--skip", "oned,vmm,restricted,execrc,scripts,libvirt,rules"]
    conf = tmp_path / "one-tweaks.conf"
    monkeypatch.setenv("ONE_TWEAKS_CONF", str(conf))

    def configure(host: str, port: int, token: str) -> None:
        conf.write_text(f"SP_API_HTTP_HOST={host}\nSP_API_HTTP_PORT={port}\nSP_AUTH_TOKEN={token}\n"
                        f"SP_STORPOOL_CONF={tmp_path}/no-storpool.conf\n")

    conf.write_text(f"SP_STORPOOL_CONF={tmp_path}/no-storpool.conf\n")
    rc, lines = doctor_lines(front72, capsys, *skip)
    assert rc == 1 and lines[0].startswith("api: StorPool API not configured")
    with StorPoolSim(tmp_path / "sp", token="good") as sim:
        configure(sim.host, sim.port, "good")
        rc, lines = doctor_lines(front72, capsys, *skip)
        assert rc == 0, lines
        assert [c for c, _ in sim.calls] == ["ServicesList"]  # one cheap GET
        configure(sim.host, sim.port, "bad")
        rc, lines = doctor_lines(front72, capsys, *skip)
        assert rc == 1 and lines[0].startswith(f"api: StorPool API {sim.host}:{sim.port} refused a request")
        assert "SP_AUTH_TOKEN" in lines[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configure("127.0.0.1", port, "good")
    rc, lines = doctor_lines(front72, capsys, *skip)
    assert rc == 1 and lines[0].startswith(f"api: StorPool API 127.0.0.1:{port} unreachable")
    rc, lines = doctor_lines(front72, capsys, *skip, "--offline")
    assert rc == 0


def test_doctor_reaches_each_linstor_datastores_controllers(front72: Front, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """linstor_un: per datastore oned lists, a controller of its LS_CONTROLLERS (template over
    the configuration) answers one GET; one line per datastore none of whose controllers
    answers, one per datastore with a dead one among live ones (failover)."""
    from sim import oned as oned_sim
    from sim.linstor import LinstorSim

    monkeypatch.setattr(plan, "known_drivers", lambda: ["linstor_un"])
    skip = ["--skip", "oned,vmm,restricted,execrc,scripts,libvirt,rules"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    conf = tmp_path / "one-tweaks.conf"
    auth = tmp_path / "one_auth"
    auth.write_text("oneadmin:doctor\n")
    monkeypatch.setenv("ONE_TWEAKS_CONF", str(conf))
    monkeypatch.setenv("ONE_AUTH", str(auth))
    with LinstorSim(tmp_path / "linstor") as sim, oned_sim.OnedDouble(auth="oneadmin:doctor") as oned:
        monkeypatch.setenv("ONE_XMLRPC", oned.url)
        live = f"127.0.0.1:{sim.port}"
        conf.write_text(f"LS_CONTROLLERS={live}\n")
        oned.add_datastore(oned_sim.datastore_document(100, "lin-images", ds_mad="linstor_un", tm_mad="linstor_un"))
        oned.add_datastore(oned_sim.datastore_document(101, "lin-system", ds_type="SYSTEM_DS", tm_mad="linstor_un",
                                                       attrs={"LS_CONTROLLERS": f"{dead},{live}"}))
        oned.add_datastore(oned_sim.datastore_document(102, "files", ds_mad="fs", tm_mad="ssh",
                                                       attrs={"LS_CONTROLLERS": dead}))  # not linstor_un
        mark = len(sim.calls)
        rc, lines = doctor_lines(front72, capsys, *skip)
        assert rc == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"api: LINSTOR controller(s) of datastore 101 (lin-system) unreachable ({dead}: ")
        assert "fail over" in lines[0] and "LS_CONTROLLERS" in lines[0]
        assert {c.name for c in sim.calls[mark:]} == {"controller_version"}  # one cheap GET per controller
        assert len(sim.calls) - mark == 1  # a controller two datastores name is probed once

        conf.write_text(f"LS_CONTROLLERS={dead}\n")  # datastore 100 now has no live controller
        rc, lines = doctor_lines(front72, capsys, *skip)
        assert rc == 1 and len(lines) == 2, lines
        assert lines[0].startswith(f"api: no LINSTOR controller of datastore 100 (lin-images) answers ({dead}: ")
        assert "every linstor_un action on it fails" in lines[0] and str(conf) in lines[0]

        conf.write_text(f"LS_CONTROLLERS={live}\n")
        oned.datastore(101).find("TEMPLATE/LS_CONTROLLERS").text = f"linstor://{live}"  # type: ignore[union-attr]
        rc, lines = doctor_lines(front72, capsys, *skip)
        assert rc == 0, lines
        assert lines == ["one-tweaks doctor: healthy (api checked)"]
        rc, lines = doctor_lines(front72, capsys, *skip, "--offline")
        assert rc == 0
    monkeypatch.setenv("ONE_XMLRPC", "http://127.0.0.1:1/RPC2")  # oned down: one line, no traceback
    rc, lines = doctor_lines(front72, capsys, *skip)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("api: cannot list the linstor_un datastores"), lines


def test_doctor_rejects_unknown_checks(front72: Front, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        front72.run("doctor", "--skip", "nonsense")
    assert exc.value.code == 2


def test_state_records_what_install_did(front72: Front) -> None:
    assert front72.run("install") == 0
    state = json.loads((front72.root / "one-tweaks-install" / "state.json").read_text())
    assert state["oned_conf"] == str(front72.oned) and state["interpreter"] == sys.executable
    kinds = sorted(e["what"] for e in state["oned_conf_edits"])
    assert {"TM_MAD", "DATASTORE_MAD", "TM_MAD_CONF storpool", "DS_MAD_CONF storpool", "VM_RESTRICTED_ATTR",
            "IMAGE_RESTRICTED_ATTR"} <= set(kinds)
    assert set(state["scripts"]) == {str(p.relative_to(front72.remotes)) for p in front72.scripts()}


def test_upgrade_adds_new_overrides_and_drops_stale_scripts(front72: Front, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """An older build (fewer VMM overrides, one more TM action) installed first, then this
    one: the -l list grows in a second recorded edit, the stale script goes, and uninstall
    still gives back the stock files byte for byte."""
    real = plan.actions
    old_vmm = [m for m in real("vmm") if m == "deploy_tweaks"]

    def older(package: str) -> list[str]:
        if package == "vmm":
            return old_vmm
        return [*real(package), "retired_action"] if package == "tm" else real(package)

    monkeypatch.setattr(plan, "actions", older)
    assert front72.run("install") == 0
    assert (front72.remotes / "tm/storpool/retired_action").exists()
    first_l = front72.option("VM_MAD", "-l", NAME="kvm")
    monkeypatch.setattr(plan, "actions", real)
    assert front72.run("install") == 0
    assert not (front72.remotes / "tm/storpool/retired_action").exists()
    local = front72.option("VM_MAD", "-l", NAME="kvm")
    assert local == [f"{k}={v}" for k, v in vmm_available().items()]
    assert local[:len(first_l)] == first_l
    state = json.loads((front72.root / "one-tweaks-install" / "state.json").read_text())
    assert "tm/storpool/retired_action" not in state["scripts"]
    if len(vmm_available()) > len(old_vmm):
        assert [e["what"] for e in state["oned_conf_edits"]].count("VM_MAD") == 2
    assert front72.run("uninstall") == 0
    assert front72.oned.read_bytes() == front72.original[front72.oned]
    assert front72.scripts() == []
