"""LINSTOR controllers over TLS (``linstor+ssl://``, LS_CAFILE, LS_CERTFILE, LS_KEYFILE): what
``one-tweaks doctor`` says about them and what the ``linstor_un`` drivers do with them.

The controller is the LINSTOR simulator (tests/sim/linstor.py, NOT LINSTOR) served over TLS
by its ``serve_tls`` listener, with a server certificate for 127.0.0.1 and, like a controller
with a trust store, client certificates required. The certificates are made for each test
session with the ``openssl`` command in a temporary directory (a CA, a server and a client
certificate signed by it, and an unrelated CA); no key is kept anywhere else.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from linstor_env import IMAGE_DS, VM, LinstorCloud, failed, lcloud, ok
from sim import oned as oned_sim
from sim.linstor import LinstorSim
from storage_env import sshd
from test_install import Front, doctor_lines

from onelib.install import plan

FIXTURES = (lcloud, sshd)
SKIP = ["--skip", "oned,vmm,restricted,execrc,scripts,libvirt,rules"]   # doctor: only the api check


# --- certificates ---------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    other_ca: Path        # a CA that signed nothing of this controller
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server(self, *, client_certs: bool = True) -> ssl.SSLContext:
        """The controller's side; ``client_certs``: only clients with a certificate of ``ca``."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if client_certs:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca)
        return context


def _openssl(*args: str | Path) -> None:
    proc = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"openssl {' '.join(map(str, args))}: {proc.stderr}"


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN=one-tweaks test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _signed(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr",
                           directory / f"{name}.ext")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
             "-out", csr, "-subj", f"/CN={name}")
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" + extensions)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-out", cert,
             "-days", "2", "-extfile", ext)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = _ca(directory, "ca")
    other, _ = _ca(directory, "other-ca")
    server = _signed(directory, "127.0.0.1", ca, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    client = _signed(directory, "one-fe", ca, "extendedKeyUsage=clientAuth\n")
    return Pki(ca=ca[0], other_ca=other, server_cert=server[0], server_key=server[1], client_cert=client[0],
               client_key=client[1])


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- doctor ---------------------------------------------------------------------------------------


@pytest.fixture
def tls_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              pki: Pki) -> Iterator[tuple[Front, LinstorSim, oned_sim.OnedDouble, Path]]:
    """A front-end with linstor_un only, the oned double, the simulator serving TLS."""
    monkeypatch.setattr(plan, "known_drivers", lambda: ["linstor_un"])
    conf, auth = tmp_path / "one-tweaks.conf", tmp_path / "one_auth"
    auth.write_text("oneadmin:doctor\n")
    monkeypatch.setenv("ONE_TWEAKS_CONF", str(conf))
    monkeypatch.setenv("ONE_AUTH", str(auth))
    with LinstorSim(tmp_path / "linstor") as sim, oned_sim.OnedDouble(auth="oneadmin:doctor") as oned:
        monkeypatch.setenv("ONE_XMLRPC", oned.url)
        sim.serve_tls(pki.server())
        oned.add_datastore(oned_sim.datastore_document(100, "lin-images", ds_mad="linstor_un", tm_mad="linstor_un"))
        yield Front(tmp_path / "front", "7.2"), sim, oned, conf


def settings(conf: Path, **values: str | Path) -> None:
    conf.write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def test_doctor_reaches_a_linstor_controller_over_tls(tls_world: tuple[Front, LinstorSim, oned_sim.OnedDouble, Path],
                                                      pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    front, sim, oned, conf = tls_world
    tls = f"127.0.0.1:{sim.tls_port}"
    client = {"LS_CERTFILE": pki.client_cert, "LS_KEYFILE": pki.client_key}

    # the configuration's controller without a scheme: with TLS files it is linstor+ssl
    settings(conf, LS_CONTROLLERS=tls, LS_CAFILE=pki.ca, **client)
    mark = len(sim.requests)
    rc, lines = doctor_lines(front, capsys, *SKIP)
    assert (rc, lines) == (0, ["one-tweaks doctor: healthy (api checked)"])
    (probe,) = sim.requests[mark:]
    assert (probe["name"], probe["tls"], probe["status"], probe["agent"]) == (
        "controller_version", True, 200, "one-tweaks-doctor")

    # a datastore whose template names the controller and a CA that did not sign its certificate
    oned.add_datastore(oned_sim.datastore_document(
        101, "lin-system", ds_type="SYSTEM_DS", tm_mad="linstor_un",
        attrs={"LS_CONTROLLERS": f"linstor+ssl://{tls}", "LS_CAFILE": str(pki.other_ca)}))
    failures = sim.tls_failures
    rc, lines = doctor_lines(front, capsys, *SKIP)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith(
        f"api: no LINSTOR controller of datastore 101 (lin-system) answers (linstor+ssl://{tls}: its TLS "
        f"certificate does not verify against LS_CAFILE {pki.other_ca} ("), lines
    # OpenSSL's reason: the controller sends its CA along when it has it (client certificates)
    assert re.search(r" \((self-signed certificate in certificate chain|unable to get local issuer certificate)\)\): "
                     "every linstor_un action on it fails; check LS_CONTROLLERS", lines[0]), lines
    assert "LS_CAFILE for TLS" in lines[0] and "Traceback" not in lines[0]
    deadline = time.monotonic() + 5  # the controller's side of the handshake ends in its own thread
    while sim.tls_failures == failures and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.tls_failures == failures + 1, "the controller saw the handshake refused"
    assert len(sim.requests) == mark + 2, "datastore 100 probed again; 101 never got past the handshake"

    # the right CA, but the controller is not there (nothing listens on the port)
    dead = dead_port()
    template = oned.datastore(101).find("TEMPLATE")
    assert template is not None
    template.find("LS_CAFILE").text = str(pki.ca)  # type: ignore[union-attr]
    template.find("LS_CONTROLLERS").text = f"linstor+ssl://127.0.0.1:{dead}"  # type: ignore[union-attr]
    rc, lines = doctor_lines(front, capsys, *SKIP)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"api: no LINSTOR controller of datastore 101 (lin-system) answers "
                               f"(linstor+ssl://127.0.0.1:{dead}: [Errno 111] Connection refused): "), lines
    # ... and with the live one next to it: the drivers fail over, the dead one is still reported
    template.find("LS_CONTROLLERS").text = f"linstor+ssl://127.0.0.1:{dead},linstor+ssl://{tls}"  # type: ignore[union-attr]
    rc, lines = doctor_lines(front, capsys, *SKIP)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"api: LINSTOR controller(s) of datastore 101 (lin-system) unreachable "
                               f"(linstor+ssl://127.0.0.1:{dead}: [Errno 111] Connection refused): the drivers fail "
                               "over"), lines
    template.find("LS_CONTROLLERS").text = f"linstor+ssl://{tls}"  # type: ignore[union-attr]
    rc, lines = doctor_lines(front, capsys, *SKIP)
    assert (rc, lines) == (0, ["one-tweaks doctor: healthy (api checked)"])

    # the controller wants a client certificate and the configuration has none
    oned.remove_datastore(101)
    settings(conf, LS_CONTROLLERS=tls, LS_CAFILE=pki.ca)
    rc, lines = doctor_lines(front, capsys, *SKIP)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"api: no LINSTOR controller of datastore 100 (lin-images) answers ({tls}: TLS "
                               "handshake failed without a client certificate (LS_CERTFILE/LS_KEYFILE): "), lines

    # CA file missing; a key without its certificate: the settings are named, one line each time
    settings(conf, LS_CONTROLLERS=tls, LS_CAFILE=pki.ca.with_name("nowhere.pem"), **client)
    rc, lines = doctor_lines(front, capsys, *SKIP)
    assert rc == 1 and len(lines) == 1 and f"{tls}: TLS settings: [Errno 2] No such file or directory" in lines[0]
    settings(conf, LS_CONTROLLERS=tls, LS_CAFILE=pki.ca, LS_KEYFILE=pki.client_key)
    rc, lines = doctor_lines(front, capsys, *SKIP)
    assert rc == 1 and len(lines) == 1 and f"{tls}: TLS settings: LS_KEYFILE is set without LS_CERTFILE" in lines[0]

    # no CA file: python-linstor (the drivers) does not verify the controller then; neither does doctor
    settings(conf, LS_CONTROLLERS=tls, **client)
    rc, lines = doctor_lines(front, capsys, *SKIP)
    assert (rc, lines) == (0, ["one-tweaks doctor: healthy (api checked)"])
    # a plain linstor:// controller on the TLS port is no controller that answers
    settings(conf, LS_CONTROLLERS=f"linstor://{tls}")
    rc, lines = doctor_lines(front, capsys, *SKIP)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith(
        f"api: no LINSTOR controller of datastore 100 (lin-images) answers (linstor://{tls}: "), lines


# --- the drivers ----------------------------------------------------------------------------------


def test_linstor_un_drivers_talk_tls_to_the_controller(lcloud: LinstorCloud, pki: Pki) -> None:
    """DS monitor and TM mkimage/delete through ``linstor+ssl`` with a client certificate; a
    CA that did not sign the controller's certificate, a missing client certificate and a key
    without its certificate each fail with one line, nothing changed."""
    sim = lcloud.sim
    port = sim.serve_tls(pki.server())
    lcloud.configure(LS_CONTROLLERS=f"127.0.0.1:{port}", LS_CAFILE=str(pki.ca), LS_CERTFILE=str(pki.client_cert),
                     LS_KEYFILE=str(pki.client_key))
    lcloud.make_vm(VM, disks=[{"volatile": "fs", "size": 8, "fs": None}], context=False)
    ds = lcloud.ds_message(None, IMAGE_DS)
    mark = len(sim.requests)
    out = ok(lcloud.run_ds("monitor", ds, IMAGE_DS)).stdout.decode()
    assert {line.split("=")[0] for line in out.split()} == {"USED_MB", "TOTAL_MB", "FREE_MB"}
    assert int(dict(line.split("=") for line in out.split())["TOTAL_MB"]) > 0
    ok(lcloud.run_tm("mkimage", "8", "raw", lcloud.tm_path("node1", VM, 0), str(VM), "101"))
    name = f"one-vm-{VM}-disk-0"
    assert lcloud.placed(name) == {"stor1": False, "stor2": False, "node1": True}
    assert lcloud.link("node1", VM, 0) == lcloud.dev("node1", name)
    seen = sim.requests[mark:]
    assert len(seen) > 3 and all(r["tls"] for r in seen), "every request over TLS"
    assert all(r["agent"].startswith("PythonLinstor/") for r in seen), "python-linstor's requests"

    def one_line(**conf: str | None) -> str:
        lcloud.configure(**conf)
        before = (len(sim.requests), lcloud.inv())
        line = failed(lcloud.run_ds("monitor", ds, IMAGE_DS))
        assert "Traceback" not in line and (len(sim.requests), lcloud.inv()) == before, "nothing reached the API"
        return line

    line = one_line(LS_CAFILE=str(pki.other_ca))
    assert line.startswith(f"no LINSTOR controller answers (linstor+ssl://127.0.0.1:{port}): "), line
    assert f"Unable to connect to linstor+ssl://127.0.0.1:{port}: [SSL: CERTIFICATE_VERIFY_FAILED]" in line, line
    line = one_line(LS_CAFILE=str(pki.ca), LS_CERTFILE=None, LS_KEYFILE=None)
    assert line.startswith(f"no LINSTOR controller answers (linstor+ssl://127.0.0.1:{port}): "), line
    # the controller refuses the handshake; the client reads its alert, or (a race) only the closed connection
    assert "alert certificate required" in line or "EOF occurred in violation of protocol" in line, line
    line = one_line(LS_KEYFILE=str(pki.client_key))
    assert line == "LINSTOR TLS settings: LS_KEYFILE is set without LS_CERTFILE (the client certificate it belongs to)"
    lcloud.configure(LS_CERTFILE=str(pki.client_cert))
    ok(lcloud.run_tm("delete", lcloud.tm_path("node1", VM, 0), str(VM), "101"))
    assert name not in lcloud.inv()
