"""rbd driver figures on a live single-node Ceph cluster (tests/ceph_env.py brings one up in a
temporary directory and stops it by PID), run by ``bench/bench_storage.py --rbd``:

1. librados/librbd operations per clone (a VM disk: copy-on-write clone of the image's
   ``@snap``) and per delete, connection included;
2. ``datastore/rbd/monitor`` as a whole process with 1,000 images in the pool (one
   ``ceph df`` whatever the number of images);
3. image import throughput: ``datastore/rbd/cp`` of a raw file as a ratio to ``rbd import``
   of the same file in the same run (goal: >= 0.9).

    .venv/bin/python bench/bench_storage.py --rbd [--size-mib 1024] [--images 1000]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
import drivers  # noqa: E402
from ceph_env import ceph_cluster  # noqa: E402

from datastore.backends.rbd import Rbd  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "opennebula"


def payload(conf: Path, image: etree._Element | None) -> bytes:
    ds = etree.parse(str(FIXTURES / "datastore-100-image.xml")).getroot()
    for path in ("DS_MAD", "TM_MAD", "TEMPLATE/DS_MAD", "TEMPLATE/TM_MAD"):
        ds.find(path).text = "rbd"  # type: ignore[union-attr]
    template = ds.find("TEMPLATE")
    assert template is not None
    template.find("BRIDGE_LIST").text = ""  # type: ignore[union-attr]
    template.find("RESTRICTED_DIRS").text = ""  # type: ignore[union-attr]
    for key, value in (("POOL_NAME", "one"), ("CEPH_CONF", str(conf)), ("CEPH_USER", "admin")):
        etree.SubElement(template, key).text = value
    root = etree.Element("DS_DRIVER_ACTION_DATA")
    if image is not None:
        root.append(image)
    root.append(ds)
    return base64.b64encode(etree.tostring(root))


def image(image_id: int, path: str) -> etree._Element:
    img = etree.parse(str(FIXTURES / "ds-cp.xml")).getroot().find("IMAGE")
    assert img is not None
    img.find("ID").text = str(image_id)  # type: ignore[union-attr]
    img.find("PATH").text = path  # type: ignore[union-attr]
    return img


def action(name: str, data: bytes, ident: int, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(drivers.ds("rbd") / name), str(ident)], input=data,
                          capture_output=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed: {proc.stderr.decode().strip()}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-rbd-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        conf_file = tmp / "one-tweaks.conf"
        (tmp / "staging").mkdir()
        conf_file.write_text(f"LOCK_DIR={tmp}/locks\nSTAGING_DIR={tmp}/staging\nAPI_TIMEOUT=60\n")
        env = {**os.environ, "ONE_TWEAKS_CONF": str(conf_file)}
        with ceph_cluster(tmp / "ceph") as ceph:
            backend = Rbd(pool="one", user="admin", conf=str(ceph.conf), timeout=60)
            backend.create("one/one-1", 64 << 20, placement="one", tags={})
            backend.close()
            clones, deletes = [], []
            for n in range(5):
                b = Rbd(pool="one", user="admin", conf=str(ceph.conf), timeout=60)
                b.clone("one/one-1", f"one/one-1-{n}-0", placement="one", from_snapshot=False,
                        tags={"nvm": str(n), "diskid": "0"})
                clones.append(b.calls)
                b.close()
                b = Rbd(pool="one", user="admin", conf=str(ceph.conf), timeout=60)
                b.delete(f"one/one-1-{n}-0")
                deletes.append(b.calls)
                b.close()
            print(f"rbd: librados/librbd operations per clone {statistics.median(clones):.0f} "
                  f"(first, making @snap: {clones[0]}), per delete {statistics.median(deletes):.0f}")

            # monitor with --images images in the pool
            b = Rbd(pool="one", user="admin", conf=str(ceph.conf), timeout=60)
            start = time.perf_counter()
            for n in range(args.images):
                b.create(f"one/bench-{n}", 1 << 20, placement="one", tags={})
            made = time.perf_counter() - start
            b.close()
            data = payload(ceph.conf, None)
            times = [action("monitor", data, 100, env) for _ in range(args.runs)]
            print(f"rbd: monitor with {args.images} images in the pool: {statistics.median(times) * 1000:.0f} ms "
                  f"(median of {args.runs}; making the images took {made:.0f} s)")

            # import throughput vs rbd import
            src = tmp / "disk.raw"
            with open(src, "wb") as fh:
                block = os.urandom(1 << 20)
                for _ in range(args.size_mib):
                    fh.write(block)
            ours, theirs = [], []
            for run in range(args.runs):
                start = time.perf_counter()
                ceph.cli("rbd", "import", "--no-progress", str(src), f"one/ref-{run}", timeout=3600)
                theirs.append(time.perf_counter() - start)
                ours.append(action("cp", payload(ceph.conf, image(500 + run, str(src))), 500 + run, env))
            mib = args.size_mib
            ratio = statistics.median(theirs) / statistics.median(ours)
            print(f"rbd: import of {mib} MiB raw: cp {mib / statistics.median(ours):.0f} MiB/s, rbd import "
                  f"{mib / statistics.median(theirs):.0f} MiB/s, ratio {ratio:.2f} (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
