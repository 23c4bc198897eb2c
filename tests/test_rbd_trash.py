"""CEPH_TRASH=yes on the rbd drivers: TM delete flattens a disk and moves it to the RBD trash
for DELAY_DELETE; `one-tweaks trash --driver rbd` lists it and restores it as a new image."""

from __future__ import annotations

import json
import subprocess
import sys

from ceph_env import ceph
from rbd_env import IMAGE_DS, POOL, RbdCloud, rbd_cloud
from storage_env import sshd

FIXTURES = (ceph, rbd_cloud, sshd)


def test_deleted_disk_waits_in_the_rbd_trash_and_comes_back(rbd_cloud: RbdCloud) -> None:
    ceph = rbd_cloud.ceph
    ceph.cli("rbd", "create", "--size", "16", f"{POOL}/one-7")
    rbd_cloud.make_image(7)
    rbd_cloud.make_vm(42, [{"image": 7}])
    from lxml import etree
    etree.SubElement(rbd_cloud.oned.datastore(IMAGE_DS).find("TEMPLATE"), "CEPH_TRASH").text = "yes"
    rbd_cloud.configure(DELAY_DELETE="1h")
    args = (f"one-fe:{POOL}/one-7", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS))
    assert rbd_cloud.run_tm("clone", *args).returncode == 0
    done = rbd_cloud.run_tm("delete", rbd_cloud.tm_path("node1", 42, 0), "42", str(IMAGE_DS))
    assert done.returncode == 0, done.stderr.decode()
    assert ceph.rbd_ls(POOL) == ["one-7"]
    trash = ceph.rbd_trash(POOL)
    assert [t["name"] for t in trash] == ["one-7-42-0"]
    # flattened first: the image can be deleted although its disk waits in the trash
    listed = subprocess.run([sys.executable, "-m", "tweaks", "trash", "--driver", "rbd", "list", "--datastore",
                             str(IMAGE_DS), "--json"], capture_output=True, env=rbd_cloud.env, timeout=120)
    assert listed.returncode == 0, listed.stderr.decode()
    items = json.loads(listed.stdout)
    assert len(items) == 1 and items[0]["volume"] == f"{POOL}/one-7-42-0" and items[0]["vm"] == "42"
    assert 3000 < items[0]["expires_in_s"] <= 3600
    restored = subprocess.run([sys.executable, "-m", "tweaks", "trash", "--driver", "rbd", "restore",
                               items[0]["snapshot"], "--datastore", str(IMAGE_DS)], capture_output=True,
                              env=rbd_cloud.env, timeout=120)
    assert restored.returncode == 0, restored.stderr.decode()
    assert ceph.rbd_trash(POOL) == []
    names = [n for n in ceph.rbd_ls(POOL) if n.startswith("one-img-restored-")]
    assert len(names) == 1
    # the new image's SOURCE is <POOL_NAME>/<image>, as the stock ceph driver's (and our DS cp's)
    image_id = int(restored.stdout.decode().split()[1])
    image = rbd_cloud.oned.image(image_id)
    assert image.findtext("SOURCE") == f"{POOL}/{names[0]}"
    # ... and the DS actions find the volume through it: rm of that image removes it
    done = rbd_cloud.run_ds("rm", rbd_cloud.ds_message(image), image_id)
    assert done.returncode == 0, done.stderr.decode()
    assert ceph.rbd_ls(POOL) == ["one-7"]
