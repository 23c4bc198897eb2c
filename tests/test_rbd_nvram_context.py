"""UEFI NVRAM on rbd, on the live Ceph cluster: TM ``context`` of a VM with T_OS_NVRAM's
volume word makes the VM's NVRAM RBD image ``<SYSPOOL>/one-sys-<VM>-nvram`` once (1 MiB, the
OVMF VARS template at its end, written through librbd), never overwrites the guest's
variables, and TM delete of the VM directory removes it; the facts name it for os_nvram.
What the driver made is read back with the ``rbd`` CLI.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ceph_env import CephCluster, ceph
from lxml import etree
from rbd_env import SYS_POOL, SYSTEM_DS, RbdCloud, ok, one_line, rbd_cloud
from sim import oned as oned_sim
from storage_env import sshd

FIXTURES = (ceph, rbd_cloud, sshd)
MiB = 2**20
VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")       # what the driver reads on the host (node1)


def export(cluster: CephCluster, image: str, tmp: Path) -> bytes:
    out = tmp / "export.bin"
    out.unlink(missing_ok=True)
    cluster.cli("rbd", "export", "--no-progress", image, str(out))
    return out.read_bytes()


def uefi_vm(cloud: RbdCloud, vm_id: int) -> etree._Element:
    """A VM whose context is disk 1 and whose NVRAM is the storage driver's volume."""
    vm = cloud.make_vm(vm_id, [{"volatile": "fs", "size": 8}])
    oned_sim._set_text(vm.find("TEMPLATE"), "CONTEXT/DISK_ID", "1")
    etree.SubElement(vm.find("USER_TEMPLATE"), "T_OS_NVRAM").text = "storpool"
    return vm


def context(cloud: RbdCloud, tmp: Path, vm_id: int, text: str = "ETH0_IP='10.0.0.2'\n") -> subprocess.CompletedProcess[
        bytes]:
    ctx = tmp / "context.sh"
    ctx.write_text(text)
    return cloud.run_tm("context", str(ctx), cloud.tm_path("node1", vm_id, 1), str(vm_id), str(SYSTEM_DS))


def test_nvram_image_made_once_with_the_template_at_its_end(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    cluster = rbd_cloud.ceph
    template = VARS.read_bytes()
    uefi_vm(rbd_cloud, 42)
    ok(context(rbd_cloud, tmp_path, 42))
    nvram = f"{SYS_POOL}/one-sys-42-nvram"
    assert "one-sys-42-nvram" in cluster.rbd_ls(SYS_POOL)
    info = cluster.rbd_info(nvram)
    assert info is not None and info["size"] == MiB
    data = export(cluster, nvram, tmp_path)
    assert data[MiB - len(template):] == template, "the VARS template sits at the end of the image"
    assert data[:MiB - len(template)].count(0) == MiB - len(template)
    assert cluster.json("rbd", "image-meta", "list", nvram).get("one.nvm") == "42"
    # the guest changed its variables: a re-run (oned re-runs context) keeps them
    changed = bytearray(data)
    changed[MiB - len(template) + 8192:MiB - len(template) + 8200] = b"GUESTVAR"
    (tmp_path / "changed.bin").write_bytes(bytes(changed))
    cluster.cli("rbd", "rm", "--no-progress", nvram)
    cluster.cli("rbd", "import", "--no-progress", str(tmp_path / "changed.bin"), nvram)
    cluster.cli("rbd", "image-meta", "set", nvram, "one.nvm", "42")
    ok(context(rbd_cloud, tmp_path, 42, "ETH0_IP='10.0.0.3'\n"))
    assert export(cluster, nvram, tmp_path) == bytes(changed), "an existing NVRAM is never overwritten"
    # one whose variable store a crash left empty is filled
    cluster.cli("rbd", "rm", "--no-progress", nvram)
    cluster.cli("rbd", "create", "--size", "1", nvram)
    cluster.cli("rbd", "image-meta", "set", nvram, "one.nvm", "42")
    ok(context(rbd_cloud, tmp_path, 42))
    assert export(cluster, nvram, tmp_path) == data
    # TM delete of the VM directory removes it with the VM's other images
    ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", 42), "42", str(SYSTEM_DS)))
    assert "one-sys-42-nvram" not in cluster.rbd_ls(SYS_POOL)


def test_an_image_of_that_name_that_is_not_the_vms_nvram_is_refused(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    cluster = rbd_cloud.ceph
    uefi_vm(rbd_cloud, 43)
    nvram = f"{SYS_POOL}/one-sys-43-nvram"
    cluster.cli("rbd", "create", "--size", "1", nvram)
    reason = one_line(context(rbd_cloud, tmp_path, 43))
    assert nvram in reason and "NVRAM" in reason
    assert export(cluster, nvram, tmp_path).count(0) == MiB, "left untouched"


def test_facts_name_the_nvram_image_for_os_nvram(rbd_cloud: RbdCloud) -> None:
    from datastore.facts import storage_facts
    from onelib.config import Config

    vm = uefi_vm(rbd_cloud, 42)
    ds = rbd_cloud.oned.served("datastore", SYSTEM_DS)
    scalars, _ = storage_facts(vm, ds, Config())
    assert {k: v for k, v in scalars.items() if k.startswith("storage.nvram_")} == {
        "storage.nvram_protocol": "rbd", "storage.nvram_name": f"{SYS_POOL}/one-sys-42-nvram",
        "storage.nvram_hosts": ds.findtext("TEMPLATE/CEPH_HOST"), "storage.nvram_user": "admin",
        "storage.nvram_secret": ds.findtext("TEMPLATE/CEPH_SECRET"), "storage.nvram_secret_type": "ceph"}


# --- the context ISO as an RBD image -------------------------------------------------------------

def test_context_iso_is_written_into_its_rbd_image_too(rbd_cloud: RbdCloud, tmp_path: Path) -> None:
    """TM context writes the ISO into ``<SYSPOOL>/one-sys-<VM>-<DISK>`` through librbd (the
    image the facts name for context_network) and keeps the file ``disk.N`` oned's domain
    XML names; a re-run rewrites the image and grows it when the ISO outgrew it."""
    from datastore.facts import storage_facts
    from onelib.config import Config

    cluster = rbd_cloud.ceph
    vm = rbd_cloud.make_vm(42, [{"volatile": "fs", "size": 8}])
    oned_sim._set_text(vm.find("TEMPLATE"), "CONTEXT/DISK_ID", "1")
    image = f"{SYS_POOL}/one-sys-42-1"
    ok(context(rbd_cloud, tmp_path, 42, "ETH0_IP='10.0.0.2'\n"))
    iso = (rbd_cloud.vm_dir("node1", 42) / "disk.1").read_bytes()
    assert b"CONTEXT" in iso[32768:40960] and b"10.0.0.2" in iso
    assert cluster.json("rbd", "image-meta", "list", image).get("one.nvm") == "42"
    assert (cluster.rbd_info(image) or {})["size"] == MiB
    data = export(cluster, image, tmp_path)
    assert data[:len(iso)] == iso and data[len(iso):].count(0) == MiB - len(iso), "the ISO, then zeroes"
    # the facts name that image for the context CD-ROM
    _, disks = storage_facts(vm, rbd_cloud.oned.served("datastore", SYSTEM_DS), Config())
    assert disks["1"]["storage_form"] == "network" and disks["1"]["storage_name"] == image
    assert disks["1"]["storage_protocol"] == "rbd" and disks["1"]["storage_secret_type"] == "ceph"
    # a re-run (restore, NIC hot-plug, updateconf) rewrites it
    ok(context(rbd_cloud, tmp_path, 42, "ETH0_IP='10.0.0.77'\n"))
    iso = (rbd_cloud.vm_dir("node1", 42) / "disk.1").read_bytes()
    data = export(cluster, image, tmp_path)
    assert b"10.0.0.77" in iso and data[:len(iso)] == iso and data[len(iso):].count(0) == MiB - len(iso)
    # an ISO larger than the image grows it
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (6 * 4096))            # 6 MiB of context files
    ctx = tmp_path / "context.sh"
    ctx.write_text("ETH0_IP='10.0.0.78'\n")
    ok(rbd_cloud.run_tm("context", str(ctx), str(big), rbd_cloud.tm_path("node1", 42, 1), "42", str(SYSTEM_DS)))
    iso = (rbd_cloud.vm_dir("node1", 42) / "disk.1").read_bytes()
    size = (cluster.rbd_info(image) or {})["size"]
    assert len(iso) > 6 * MiB and size == -(-len(iso) // MiB) * MiB
    assert export(cluster, image, tmp_path)[:len(iso)] == iso
    # an image of that name that is not the VM's context is refused, untouched
    other = rbd_cloud.make_vm(43, [])
    oned_sim._set_text(other.find("TEMPLATE"), "CONTEXT/DISK_ID", "0")
    cluster.cli("rbd", "create", "--size", "1", f"{SYS_POOL}/one-sys-43-0")
    ctx.write_text("X=1\n")
    reason = one_line(rbd_cloud.run_tm("context", str(ctx), rbd_cloud.tm_path("node1", 43, 0), "43",
                                       str(SYSTEM_DS)))
    assert "one-sys-43-0" in reason and "context" in reason
    assert export(cluster, f"{SYS_POOL}/one-sys-43-0", tmp_path).count(0) == MiB
    # TM delete of the VM directory removes the image with the VM
    ok(rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", 42), "42", str(SYSTEM_DS)))
    assert "one-sys-42-1" not in cluster.rbd_ls(SYS_POOL)
