"""More rbd driver actions on the live cluster, through the driver executables as oned calls
them: marketplace export, TM mv, snap_create_live with the guest freeze, the VM-disk sizes
of the system datastore monitor, RBD_FORMAT=1, EC_POOL_NAME and a backup (prebackup/postbackup)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from pathlib import Path

from ceph_env import CephCluster, ceph
from livevm import libvirtd
from lxml import etree
from rbd_env import IMAGE_DS, POOL, SYS_POOL, SYSTEM_DS, RbdCloud, rbd_cloud
from sim import oned as oned_sim
from storage_env import sshd
from test_rbd_drivers import failed, import_image, ok, random_file, rbd_sha
from test_tm_storpool import _parse_monitor

FIXTURES = (ceph, rbd_cloud, sshd, libvirtd)
MiB = 2**20


def test_export_prints_import_info_of_a_file_holding_the_image(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    """DS export (marketplace): IMPORT_INFO names a file on the front-end whose data is the
    image's, with its MD5; the export snapshot is gone afterwards and the image untouched."""
    ceph = rbd_cloud.ceph
    src = tmp_path / "a.raw"
    digest = random_file(src, 8 * MiB, seed=3)
    import_image(rbd_cloud, 7, src)
    image = rbd_cloud.oned.image(7)
    image.find("SOURCE").text = f"{POOL}/one-7"
    for fmt in ("qcow2", "raw"):
        rbd_cloud.configure(EXPORT_FILE_FORMAT=fmt)
        out = ok(rbd_cloud.run_ds("export", rbd_cloud.ds_message(image), 55))
        info = etree.fromstring(out.encode())
        assert info.tag == "IMPORT_INFO"
        values = {child.tag: child.text or "" for child in info}
        assert set(values) == {"IMPORT_SOURCE", "MD5", "SIZE", "FORMAT", "DISPOSE", "DISPOSE_CMD"}
        path = Path(values["IMPORT_SOURCE"])
        assert path.is_absolute() and path.is_file()           # staged on the front-end itself
        assert values["FORMAT"] == fmt and values["SIZE"] == "8" and values["DISPOSE"] == "YES"
        assert values["MD5"] == hashlib.md5(path.read_bytes()).hexdigest()
        info_out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True,
                                  check=True).stdout
        assert f'"format": "{fmt}"' in info_out
        raw = tmp_path / f"back.{fmt}.raw"
        subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(raw)], check=True)
        assert hashlib.sha256(raw.read_bytes()).hexdigest() == digest
        # no snapshot outlives the export; DISPOSE_CMD removes the file
        assert ceph.rbd_snaps(f"{POOL}/one-7") == []
        subprocess.run(values["DISPOSE_CMD"], shell=True, check=True)   # what the marketplace runs
        assert not path.exists()
    assert rbd_sha(ceph, f"{POOL}/one-7", 8 * MiB, tmp_path) == digest
    # an image without its RBD image: one line, nothing made
    rbd_cloud.make_image(9)
    reason = failed(rbd_cloud.run_ds("export", rbd_cloud.ds_message(9), 56))
    assert "one-9" in reason
    assert ceph.rbd_ls(POOL) == ["one-7"]


def test_mv_moves_nothing_in_ceph_and_the_disks_stay(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    """TM mv (cold migration, undeploy, resume): a network disk has nothing attached on a host,
    so the images stay as they are, the VM directory follows (context ISO), the data is intact."""
    ceph = rbd_cloud.ceph
    src = tmp_path / "a.raw"
    digest = random_file(src, 4 * MiB, seed=4)
    import_image(rbd_cloud, 7, src)
    rbd_cloud.oned.image(7).find("SOURCE").text = f"{POOL}/one-7"
    rbd_cloud.make_vm(42, [{"image": 7}, {"volatile": "fs", "size": 8}])
    ok(rbd_cloud.run_tm("clone", f"one-fe:{POOL}/one-7", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS)))
    ok(rbd_cloud.run_tm("mkimage", "8", "raw", rbd_cloud.tm_path("node1", 42, 1), "42", str(SYSTEM_DS)))
    vm_dir = rbd_cloud.vm_dir("node1", 42)
    vm_dir.mkdir(parents=True, exist_ok=True)
    (vm_dir / "disk.2").write_bytes(b"context iso")
    before = (ceph.rbd_ls(POOL), ceph.rbd_ls(SYS_POOL))
    # node1 -> node2: every disk, then the VM directory
    ok(rbd_cloud.run_tm("mv", rbd_cloud.tm_path("node1", 42, 0), rbd_cloud.tm_path("node2", 42, 0), "42",
                        str(IMAGE_DS)))
    ok(rbd_cloud.run_tm("mv", rbd_cloud.tm_path("node1", 42, 1), rbd_cloud.tm_path("node2", 42, 1), "42",
                        str(SYSTEM_DS)))
    ok(rbd_cloud.run_tm("mv", rbd_cloud.tm_path("node1", 42), rbd_cloud.tm_path("node2", 42), "42",
                        str(SYSTEM_DS)))
    assert (ceph.rbd_ls(POOL), ceph.rbd_ls(SYS_POOL)) == before
    assert (rbd_cloud.vm_dir("node2", 42) / "disk.2").read_bytes() == b"context iso"
    for disk in (0, 1):
        assert not (rbd_cloud.vm_dir("node2", 42) / f"disk.{disk}").exists()    # no host link for rbd
    # undeploy (to the front-end) and back: still nothing changes in Ceph
    ok(rbd_cloud.run_tm("mv", rbd_cloud.tm_path("node2", 42, 0), rbd_cloud.tm_path("one-fe", 42, 0), "42",
                        str(IMAGE_DS)))
    ok(rbd_cloud.run_tm("mv", rbd_cloud.tm_path("one-fe", 42, 0), rbd_cloud.tm_path("node1", 42, 0), "42",
                        str(IMAGE_DS)))
    assert (ceph.rbd_ls(POOL), ceph.rbd_ls(SYS_POOL)) == before
    assert rbd_sha(ceph, f"{POOL}/one-7-42-0", 4 * MiB, tmp_path) == digest


def _guest_agent_vm(cloud: RbdCloud, deploy_id: str) -> None:
    vm = cloud.oned.vm(42)
    oned_sim._set_text(vm, "DEPLOY_ID", deploy_id)
    oned_sim._set_text(vm, "TEMPLATE/FEATURES/GUEST_AGENT", "yes")


def test_snap_create_live_freezes_the_guest_around_the_snapshot(rbd_cloud: RbdCloud, libvirtd: object,
                                                               tmp_path: Path) -> None:
    """SNAP_CREATE_LIVE with GUEST_AGENT=yes: the guest is frozen and thawed through the host's
    libvirt around the RBD snapshot. The domain is libvirt's test driver's running domain
    "test" (served by the host's libvirtd, reached through the test sshd as every host's
    libvirt is; its guest-agent calls succeed), not a qemu guest; a domain that does not exist
    gives one INFO line and the snapshot is taken unfrozen. The volume side is real: @<N>
    holds the disk's data at that moment."""
    ceph = rbd_cloud.ceph
    src = tmp_path / "a.raw"
    digest = random_file(src, 4 * MiB, seed=5)
    import_image(rbd_cloud, 7, src)
    rbd_cloud.oned.image(7).find("SOURCE").text = f"{POOL}/one-7"
    rbd_cloud.make_vm(42, [{"image": 7}])
    ok(rbd_cloud.run_tm("clone", f"one-fe:{POOL}/one-7", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS)))
    rbd_cloud.configure(LIBVIRT_URI="test:///default")
    _guest_agent_vm(rbd_cloud, "test")
    client_log = tmp_path / "libvirt-client.log"
    env = {"LIBVIRT_LOG_OUTPUTS": f"1:file:{client_log}", "LIBVIRT_LOG_FILTERS": "1:libvirt.domain"}
    done = rbd_cloud.run_tm("snap_create_live", rbd_cloud.tm_path("node1", 42, 0), "0", "42", str(IMAGE_DS),
                            env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""                                  # frozen and thawed: nothing to report
    calls = [line.split(": debug : ", 1)[-1].split(":", 1)[0] for line in client_log.read_text().splitlines()
             if "name=test," in line]
    assert [c for c in calls if c in ("virDomainFSFreeze", "virDomainFSThaw")] == ["virDomainFSFreeze",
                                                                                     "virDomainFSThaw"]
    assert [s["name"] for s in ceph.rbd_snaps(f"{POOL}/one-7-42-0")] == ["0"]
    # no such domain: the snapshot is taken without the freeze, one INFO line says so
    _guest_agent_vm(rbd_cloud, "one-42")
    done = rbd_cloud.run_tm("snap_create_live", rbd_cloud.tm_path("node1", 42, 0), "1", "42", str(IMAGE_DS))
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("INFO: 42 ") and "frozen" in lines[0], lines
    assert [s["name"] for s in ceph.rbd_snaps(f"{POOL}/one-7-42-0")] == ["0", "1"]
    # the snapshots hold the data of their moment
    other = tmp_path / "b.raw"
    random_file(other, 4 * MiB, seed=6)
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(other),
                    f"rbd:{POOL}/one-7-42-0:conf={ceph.conf}"], check=True, timeout=120)
    assert rbd_sha(ceph, f"{POOL}/one-7-42-0@1", 4 * MiB, tmp_path) == digest


def _monitor(cloud: RbdCloud, ds_id: int) -> tuple[dict[str, int], dict[int, list[str]]]:
    msg = cloud.ds_message(None, ds_id)
    etree.SubElement(msg, "DATASTORE_LOCATION").text = cloud.ds_location("node1")
    etree.SubElement(msg, "MONITOR_VM_DISKS").text = "1"
    return _parse_monitor(ok(cloud.run_tm("monitor", str(ds_id), stdin=base64.b64encode(etree.tostring(msg)))))


def test_monitor_reports_the_stored_size_of_each_vm_disk(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    """The system datastore's monitor with MONITOR_VM_DISKS=1 (TM monitor, as oned runs it):
    USED_MB/TOTAL_MB/FREE_MB, then per VM ``VM = [ ID = n, MONITOR = "<base64>" ]`` with
    DISK_SIZE=[ID=<disk>,SIZE=<MB stored>] for one-<IMAGE>-<VM>-<DISK> and one-sys-<VM>-<DISK>
    images of its POOL_NAME, and SNAPSHOT_SIZE for their @<N> snapshots. As with the stock
    driver, the images counted are those of the system datastore's pool: here both
    datastores use one pool (the usual ceph setup)."""
    ceph = rbd_cloud.ceph
    rbd_cloud.oned.datastore(SYSTEM_DS).find("TEMPLATE/POOL_NAME").text = POOL
    src = tmp_path / "a.raw"
    random_file(src, 4 * MiB, seed=7)
    import_image(rbd_cloud, 7, src)
    rbd_cloud.oned.image(7).find("SOURCE").text = f"{POOL}/one-7"
    rbd_cloud.make_vm(42, [{"image": 7}, {"volatile": "fs", "size": 16, "POOL_NAME": POOL}])
    rbd_cloud.make_vm(43, [{"image": 7}])
    ok(rbd_cloud.run_tm("clone", f"one-fe:{POOL}/one-7", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS)))
    ok(rbd_cloud.run_tm("mkimage", "16", "raw", rbd_cloud.tm_path("node1", 42, 1), "42", str(SYSTEM_DS)))
    ok(rbd_cloud.run_tm("clone", f"one-fe:{POOL}/one-7", rbd_cloud.tm_path("node1", 43, 0), "43", str(IMAGE_DS)))
    assert ceph.rbd_ls(POOL) == ["one-7", "one-7-42-0", "one-7-43-0", "one-sys-42-1"]
    # VM 42 writes 6 MiB into its volatile disk and 2 MiB into its clone, then snapshots the clone
    data = tmp_path / "w.raw"
    random_file(data, 6 * MiB, seed=8)
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "--target-is-zero", str(data),
                    f"rbd:{POOL}/one-sys-42-1:conf={ceph.conf}"], check=True, timeout=120)
    random_file(data, 2 * MiB, seed=9)
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(data),
                    f"rbd:{POOL}/one-7-42-0:conf={ceph.conf}"], check=True, timeout=120)
    ok(rbd_cloud.run_tm("snap_create", rbd_cloud.tm_path("node1", 42, 0), "0", "42", str(IMAGE_DS)))
    # VM 43 is on another system datastore now: not this one's to report
    rbd_cloud.oned.vm(43).find("HISTORY_RECORDS/HISTORY/DS_ID").text = "102"
    totals, vms = _monitor(rbd_cloud, SYSTEM_DS)
    assert set(totals) == {"USED_MB", "TOTAL_MB", "FREE_MB"} and totals["TOTAL_MB"] >= totals["FREE_MB"] > 0
    assert list(vms) == [42]
    sizes = {}
    for item in vms[42]:
        kind, _, inner = item.partition("=[")
        fields = dict(f.split("=") for f in inner.rstrip("]").split(","))
        sizes[(kind, fields.get("ID"), fields.get("DISK_ID"))] = int(fields["SIZE"])
    # rbd du's used size (whole 4 MiB objects), in MB, rounded up
    assert sizes[("DISK_SIZE", "1", None)] == 8
    assert sizes[("DISK_SIZE", "0", None)] == 4
    assert ("SNAPSHOT_SIZE", "0", "0") in sizes
    assert len(sizes) == 3, sizes
    # the image datastore's own monitor: the pool's figures only
    mon = ok(rbd_cloud.run_ds("monitor", rbd_cloud.ds_message(None), IMAGE_DS))
    assert {line.split("=")[0] for line in mon.splitlines()} == {"USED_MB", "TOTAL_MB", "FREE_MB"}


def test_rbd_format_1(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    """RBD_FORMAT=1 as the stock driver has it on this Ceph: a VM's non-persistent disk is a
    full copy of the image (no @snap, no parent: no layering), and images are made in the
    cluster's default format, as the stock driver's ``rbd import``/``rbd create`` without
    ``--image-format`` are. Ceph 16 cannot make format 1 images at all (shown below), so
    there is no format 1 image here to refuse clones or snapshots of: snapshots work."""
    ceph = rbd_cloud.ceph
    made = ceph.cli("rbd", "create", "--image-format", "1", "--size", "4", f"{POOL}/old", check=False)
    assert made.returncode != 0 and ceph.rbd_ls(POOL) == []
    etree.SubElement(rbd_cloud.oned.datastore(IMAGE_DS).find("TEMPLATE"), "RBD_FORMAT").text = "1"
    src = tmp_path / "a.raw"
    digest = random_file(src, 4 * MiB, seed=10)
    assert import_image(rbd_cloud, 7, src) == f"{POOL}/one-7 raw"
    assert ceph.rbd_info(f"{POOL}/one-7")["format"] == 2
    rbd_cloud.oned.image(7).find("SOURCE").text = f"{POOL}/one-7"
    rbd_cloud.make_vm(42, [{"image": 7}])
    ok(rbd_cloud.run_tm("clone", f"one-fe:{POOL}/one-7", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS)))
    info = ceph.rbd_info(f"{POOL}/one-7-42-0")
    assert "parent" not in info
    assert ceph.rbd_snaps(f"{POOL}/one-7") == []
    assert rbd_sha(ceph, f"{POOL}/one-7-42-0", 4 * MiB, tmp_path) == digest
    ok(rbd_cloud.run_tm("snap_create", rbd_cloud.tm_path("node1", 42, 0), "0", "42", str(IMAGE_DS)))
    assert [s["name"] for s in ceph.rbd_snaps(f"{POOL}/one-7-42-0")] == ["0"]
    ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS)))
    assert ceph.rbd_ls(POOL) == ["one-7"]


def test_backup_of_a_vm_on_rbd(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    """PREBACKUP / POSTBACKUP on rbd, as oned runs them (``host:system_dir disk_ids deploy_id
    bjid vmid sys_dsid``, the plain <VM> on stdin): one RBD group snapshot of the listed disks,
    each converted on the host (qemu reads a copy of the image's part of the group snapshot,
    which is in the group's namespace) into
    ``backup/disk.<ID>.0``, qcow2 holding exactly the disk's bytes at the snapshot; postbackup
    removes the snapshots and the directory; the disks are as they were."""
    ceph = rbd_cloud.ceph
    src = tmp_path / "a.raw"
    digests = {0: random_file(src, 8 * MiB, seed=11)}
    import_image(rbd_cloud, 7, src)
    rbd_cloud.oned.image(7).find("SOURCE").text = f"{POOL}/one-7"
    digests[1] = random_file(src, 8 * MiB, seed=12)
    import_image(rbd_cloud, 8, src)
    rbd_cloud.oned.image(8).find("SOURCE").text = f"{POOL}/one-8"
    rbd_cloud.make_vm(42, [{"image": 7, "size": 8}, {"image": 8, "persistent": True}])
    ok(rbd_cloud.run_tm("clone", f"one-fe:{POOL}/one-7", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS)))
    ok(rbd_cloud.run_tm("ln", f"one-fe:{POOL}/one-8", rbd_cloud.tm_path("node1", 42, 1), "42", str(IMAGE_DS)))
    rbd_cloud.vm_dir("node1", 42).mkdir(parents=True, exist_ok=True)
    before = ceph.rbd_ls(POOL)
    stdin = etree.tostring(rbd_cloud.oned.served("vm", 42))
    args = (rbd_cloud.tm_path("node1", 42), "0:1", "one-42", "-", "42", str(SYSTEM_DS))
    ok(rbd_cloud.run_tm("prebackup", *args, stdin=stdin))
    backup = rbd_cloud.vm_dir("node1", 42) / "backup"
    assert sorted(p.name for p in backup.iterdir()) == ["disk.0.0", "disk.1.0", "vm.xml"]
    snaps = {image: [s["name"] for s in ceph.rbd_snaps(f"{POOL}/{image}")] for image in ("one-7-42-0", "one-8")}
    # one RBD group snapshot: each image's part is in the group's namespace (qemu read it
    # through a copy, gone again), the same snapshot of both
    assert all(len(names) == 1 and names[0].startswith(".group.") for names in snaps.values()), snaps
    assert snaps["one-7-42-0"] == snaps["one-8"]
    assert ceph.rbd_ls(POOL) == before
    # the disk changes after the snapshot: the backup holds the data of the snapshot
    random_file(src, 8 * MiB, seed=13)
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src),
                    f"rbd:{POOL}/one-7-42-0:conf={ceph.conf}"], check=True, timeout=120)
    for disk, digest in digests.items():
        info = subprocess.run(["qemu-img", "info", "--output=json", str(backup / f"disk.{disk}.0")],
                              capture_output=True, text=True, check=True).stdout
        assert '"format": "qcow2"' in info and "backing-filename" not in info
        raw = tmp_path / f"disk.{disk}.raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(backup / f"disk.{disk}.0"), str(raw)],
                       check=True)
        assert hashlib.sha256(raw.read_bytes()[:8 * MiB]).hexdigest() == digest, f"disk {disk}"
    # restore: a backup file comes back as a new image (DS cp of the qcow2 file, as oned's
    # restore of a backup image registers its disks), holding the disk's bytes
    for disk, digest in digests.items():
        assert import_image(rbd_cloud, 30 + disk, backup / f"disk.{disk}.0") == f"{POOL}/one-{30 + disk} raw"
        assert rbd_sha(ceph, f"{POOL}/one-{30 + disk}", 8 * MiB, tmp_path) == digest, f"disk {disk}"
        ok(rbd_cloud.run_ds("rm", rbd_cloud.ds_message(30 + disk), 30 + disk))
    ok(rbd_cloud.run_tm("postbackup", *args, stdin=stdin))
    assert not backup.exists()
    left = {image: ceph.rbd_snaps(f"{POOL}/{image}") for image in ("one-7-42-0", "one-8")}
    assert left == {"one-7-42-0": [], "one-8": []}, left
    assert ceph.rbd_ls(POOL) == before


# all three shards of a k=2/m=1 erasure-coded pool on the one OSD: the real erasure-code data
# path without the fault tolerance (Ceph refuses k=1, and its stock rules want three OSDs)
EC_RULE = """
rule one_tweaks_ec_one_osd {
    id 42
    type erasure
    min_size 1
    max_size 10
    step set_chooseleaf_tries 5
    step set_choose_tries 100
""" + """    step take default
    step choose indep 1 type osd
    step emit
""" * 3 + "}\n"


def _ec_pool(ceph: CephCluster, tmp_path: Path, name: str) -> None:
    refused = ceph.cli("ceph", "osd", "erasure-code-profile", "set", "one-k1", "k=1", "m=1", check=False)
    assert refused.returncode != 0 and b"k=1" in refused.stderr
    ceph.cli("ceph", "osd", "getcrushmap", "-o", str(tmp_path / "crush"))
    subprocess.run(["crushtool", "-d", str(tmp_path / "crush"), "-o", str(tmp_path / "crush.txt")], check=True)
    text = (tmp_path / "crush.txt").read_text()
    if "one_tweaks_ec_one_osd" not in text:
        (tmp_path / "crush.txt").write_text(text.replace("# end crush map", EC_RULE + "# end crush map"))
        subprocess.run(["crushtool", "-c", str(tmp_path / "crush.txt"), "-o", str(tmp_path / "crush")], check=True)
        ceph.cli("ceph", "osd", "setcrushmap", "-i", str(tmp_path / "crush"))
    ceph.cli("ceph", "osd", "erasure-code-profile", "set", "one-k2", "k=2", "m=1", "crush-failure-domain=osd")
    ceph.cli("ceph", "osd", "pool", "create", name, "4", "4", "erasure", "one-k2", "one_tweaks_ec_one_osd")
    ceph.cli("ceph", "osd", "pool", "set", name, "allow_ec_overwrites", "true")
    ceph.cli("ceph", "osd", "pool", "application", "enable", name, "rbd")
    deadline = time.monotonic() + 120
    while not ceph._pgs_active():
        assert time.monotonic() < deadline, "the erasure-coded pool's placement groups never became active"
        time.sleep(1)


def test_ec_pool_name_puts_the_data_in_an_erasure_coded_pool(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    """EC_POOL_NAME: images the drivers make (DS cp, TM clone, mkimage) keep their metadata in
    POOL_NAME and their data objects in the erasure-coded pool (a real k=2/m=1 pool whose
    three shards a CRUSH rule puts on the test cluster's one OSD), and read back intact."""
    ceph = rbd_cloud.ceph
    _ec_pool(ceph, tmp_path, "one-ec")
    try:
        for ds in (IMAGE_DS, SYSTEM_DS):
            etree.SubElement(rbd_cloud.oned.datastore(ds).find("TEMPLATE"), "EC_POOL_NAME").text = "one-ec"
        src = tmp_path / "a.raw"
        digest = random_file(src, 8 * MiB, seed=14)
        import_image(rbd_cloud, 7, src)
        assert ceph.rbd_info(f"{POOL}/one-7")["data_pool"] == "one-ec"
        rbd_cloud.oned.image(7).find("SOURCE").text = f"{POOL}/one-7"
        rbd_cloud.make_vm(42, [{"image": 7}, {"volatile": "fs", "size": 8}])
        ok(rbd_cloud.run_tm("clone", f"one-fe:{POOL}/one-7", rbd_cloud.tm_path("node1", 42, 0), "42",
                            str(IMAGE_DS)))
        ok(rbd_cloud.run_tm("mkimage", "8", "raw", rbd_cloud.tm_path("node1", 42, 1), "42", str(SYSTEM_DS)))
        for image in (f"{POOL}/one-7-42-0", f"{SYS_POOL}/one-sys-42-1"):
            assert ceph.rbd_info(image)["data_pool"] == "one-ec", image
        assert rbd_sha(ceph, f"{POOL}/one-7-42-0", 8 * MiB, tmp_path) == digest
        # the data objects are in the EC pool, none in POOL_NAME
        ec_objects = ceph.cli("rados", "--pool", "one-ec", "ls").stdout.decode().split()
        assert any(o.startswith("rbd_data.") for o in ec_objects)
        meta_objects = ceph.cli("rados", "--pool", POOL, "ls").stdout.decode().split()
        assert not any(o.startswith("rbd_data.") for o in meta_objects)
        ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS)))
        ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", 42, 1), "42", str(SYSTEM_DS)))
        assert ceph.rbd_ls(POOL) == ["one-7"] and ceph.rbd_ls(SYS_POOL) == []
        # a data pool that does not exist: one line, nothing made
        for ds in (IMAGE_DS, SYSTEM_DS):
            rbd_cloud.oned.datastore(ds).find("TEMPLATE/EC_POOL_NAME").text = "nosuchpool"
        rbd_cloud.make_image(9, source="", size_mb=16)
        failed(rbd_cloud.run_ds("mkfs", rbd_cloud.ds_message(9), 9))
        assert ceph.rbd_ls(POOL) == ["one-7"]
    finally:
        ceph.purge_pool(POOL)
        ceph.purge_pool(SYS_POOL)
        ceph.cli("ceph", "osd", "pool", "delete", "one-ec", "one-ec", "--yes-i-really-really-mean-it", check=False)
