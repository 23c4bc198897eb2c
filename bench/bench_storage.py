"""Storage driver figures, against the StorPool simulator (tests/sim/storpool.py).

1. Datastore ``monitor`` as a whole process with 10 and with 10,000 volumes (and as many
   snapshots) in the cluster: wall time (goal: under 1 s at 10,000) and the API calls made
   (goal: the same number at both sizes).
2. Image import throughput: ``datastore/storpool/cp`` of a raw and of a qcow2 image, as a
   ratio to ``dd`` of the same raw data onto a volume of the same size attached the same
   way (goal: >= 0.9). The simulator's volumes are sparse files behind loop devices, so
   both sides write through the same kind of device.

    .venv/bin/python bench/bench_storage.py [--size-mib 2048] [--runs 3]
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
import drivers  # noqa: E402  (the driver executables, as one-tweaks install writes them)
from sim.storpool import StorPoolSim  # noqa: E402

TOKEN = "bench-token"
CLIENT = 3
FIXTURES = ROOT / "tests" / "fixtures" / "opennebula"


def payload(image: etree._Element | None, ds_id: int = 100) -> bytes:
    ds = etree.parse(str(FIXTURES / "datastore-100-image.xml")).getroot()
    ds.find("ID").text = str(ds_id)  # type: ignore[union-attr]
    for path in ("DS_MAD", "TM_MAD", "TEMPLATE/DS_MAD", "TEMPLATE/TM_MAD"):
        ds.find(path).text = "storpool"  # type: ignore[union-attr]
    bridge = ds.find("TEMPLATE/BRIDGE_LIST")
    bridge.text = ""  # type: ignore[union-attr]
    ds.find("TEMPLATE/RESTRICTED_DIRS").text = ""  # type: ignore[union-attr]
    root = etree.Element("DS_DRIVER_ACTION_DATA")
    if image is not None:
        root.append(image)
    root.append(ds)
    return base64.b64encode(etree.tostring(root))


def image(image_id: int, path: str) -> etree._Element:
    doc = etree.parse(str(FIXTURES / "ds-cp.xml")).getroot()
    img = doc.find("IMAGE")
    assert img is not None
    img.find("ID").text = str(image_id)  # type: ignore[union-attr]
    img.find("PATH").text = path  # type: ignore[union-attr]
    return img


def run(action: str, data: bytes, ident: int, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(drivers.ds("storpool") / action), str(ident)],
                          input=data, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{action} failed: {proc.stderr.decode().strip()}")
    return elapsed


def main() -> int:
    if "--rbd" in sys.argv[1:]:  # the rbd figures on a live Ceph cluster (bench/bench_rbd.py)
        from bench_rbd import main as rbd_main

        return rbd_main([a for a in sys.argv[1:] if a != "--rbd"])
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)  # fixed per-action costs hide throughput below ~1 GiB
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-storage-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        dev = tmp / "dev"
        with StorPoolSim(tmp / "sim", token=TOKEN) as sim:
            sim.add_client(CLIENT, dev)
            (tmp / "storpool.conf").write_text(f"SP_OURID={CLIENT}\n")
            (tmp / "auth").write_text("oneadmin:x\n")
            conf = tmp / "one-tweaks.conf"
            conf.write_text(f"SP_API_HTTP_HOST={sim.host}\nSP_API_HTTP_PORT={sim.port}\nSP_AUTH_TOKEN={TOKEN}\n"
                            f"SP_DEVICE_DIR={dev}\nSP_STORPOOL_CONF={tmp / 'storpool.conf'}\n"
                            f"LOCK_DIR={tmp / 'locks'}\nSTAGING_DIR={tmp}\n")
            env = dict(os.environ, ONE_TWEAKS_CONF=str(conf), ONE_AUTH=str(tmp / "auth"),
                       ONE_XMLRPC="http://127.0.0.1:9/RPC2")
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            from datastore.backends.storpool_api import Api

            api = Api(sim.host, sim.port, TOKEN)
            api.call("VolumeTemplateCreate", {"name": "one-ds-100", "replication": 3})

            # 1. monitor
            monitor = payload(None)
            for total in (10, 10_000):
                sim.bulk_create(total - len(sim.inventory()["volumes"]), 1 << 30, prefix=f"bulk{total}",
                                template="one-ds-100", snapshots=1, stored=1 << 20)
                before = len(sim.calls)
                times = [run("monitor", monitor, 100, env) for _ in range(args.runs)]
                calls = (len(sim.calls) - before) // args.runs
                print(f"monitor, {total:6d} volumes: {statistics.median(times) * 1000:7.1f} ms, "
                      f"{calls} API call(s) per run (goal: < 1000 ms, same calls at any size)")

            # 2. import throughput
            size = args.size_mib << 20
            raw = tmp / "image.raw"
            with open(raw, "wb") as fh:
                for _ in range(args.size_mib):
                    fh.write(os.urandom(1 << 20))
            qcow2 = tmp / "image.qcow2"
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
            dd_times = []
            for _ in range(args.runs):
                # a fresh volume each time, as cp gets: writing into new (sparse) storage costs more
                api.call("VolumeCreate", {"name": "dd-target", "size": size, "template": "one-ds-100"})
                api.call("VolumesReassignWait", {"reassign": [{"volume": "dd-target", "rw": [CLIENT]}]})
                start = time.perf_counter()
                subprocess.run(["dd", f"if={raw}", f"of={dev / 'dd-target'}", "bs=4M", "oflag=direct",
                                "conv=fsync", "status=none"], check=True)
                dd_times.append(time.perf_counter() - start)
                api.call("VolumesReassignWait", {"reassign": [{"volume": "dd-target", "detach": [CLIENT]}]})
                api.call("VolumeDelete/dd-target", {})
            dd = statistics.median(dd_times)
            print(f"dd of {args.size_mib} MiB raw onto an attached volume: {dd:6.2f} s "
                  f"({args.size_mib / dd:7.1f} MiB/s)")
            next_id = 1000
            for fmt, path in (("raw", raw), ("qcow2", qcow2)):
                times = []
                for _ in range(args.runs):
                    times.append(run("cp", payload(image(next_id, str(path))), next_id, env))
                    run("rm", payload(image(next_id, str(path))), next_id, env)
                    next_id += 1
                cp = statistics.median(times)
                print(f"cp {fmt:5} {args.size_mib} MiB: {cp:6.2f} s ({args.size_mib / cp:7.1f} MiB/s), "
                      f"throughput ratio to dd: {dd / cp:.2f} (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
