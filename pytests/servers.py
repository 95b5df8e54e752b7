"""Real servers for the output tests: Mosquitto, InfluxDB 1.x and VictoriaMetrics.

Each runs as its own process on a free 127.0.0.1 port with its data in a temporary directory,
and can be stopped and started again on the same port and data (the outage tests). A missing
binary skips the test with the Debian package to install; nothing here touches a system
service (the system Mosquitto on 1883 is left alone).

Test modules wrap these in their own fixtures: ``with Mosquitto(tmp) as broker: ...``.

Size: over the ~400-line guide on purpose: one class per real server, so each test module starts
only what it needs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytests.helpers import free_port, wait_for

PACKAGES = {"mosquitto": "mosquitto", "influxd": "influxdb", "victoria-metrics": "victoria-metrics"}
_SEARCH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in _SEARCH:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require(name: str) -> str:
    """The binary's path, or skip the test naming the Debian package that provides it."""
    path = find_binary(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install {PACKAGES.get(name, name)})")
    return path


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Server:
    """A child process with start/stop/restart on a fixed port and data directory."""

    binary = ""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.path = require(self.binary)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{Path(self.binary).name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return port_open(self.port)

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.binary} not ready in 30 s: {self.tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        wait_for(lambda: not port_open(self.port), timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- Mosquitto -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls(folder: Path) -> TlsFiles:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate.

    With the ``cryptography`` package when it is installed (not a project dependency), else
    with the ``openssl`` command; the test is skipped when neither exists.
    """
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _make_tls_openssl(folder)
    return _make_tls_cryptography(folder)


def _make_tls_openssl(folder: Path) -> TlsFiles:
    openssl = require("openssl")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, cwd=folder, capture_output=True)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=pgw test CA")
    (folder / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (folder / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for who, cn in (("server", "127.0.0.1"), ("client", "pgw-client")):
        run("req", *curve, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{who}.pem", "-days", "1", "-extfile", f"{who}.ext")
    return TlsFiles(ca=folder / "ca.pem", server_cert=folder / "server.pem",
                    server_key=folder / "server.key", client_cert=folder / "client.pem",
                    client_key=folder / "client.key")


def _make_tls_cryptography(folder: Path) -> TlsFiles:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
        return path

    def save_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("pgw test CA")).issuer_name(name("pgw test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server_cert, server_key = leaf("127.0.0.1", server=True)
    client_cert, client_key = leaf("pgw-client", server=False)
    return TlsFiles(
        ca=save_cert(ca, folder / "ca.pem"),
        server_cert=save_cert(server_cert, folder / "server.pem"),
        server_key=save_key(server_key, folder / "server.key"),
        client_cert=save_cert(client_cert, folder / "client.pem"),
        client_key=save_key(client_key, folder / "client.key"),
    )


class Mosquitto(Server):
    """A private broker; ``tls`` requires client certificates, ``users`` a password file."""

    binary = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        tls: TlsFiles | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, port)
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if users else 'true'}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_queued_messages 0",
        ]
        if users:
            passwd = self.workdir / "passwd"
            passwd.write_text("")
            tool = require("mosquitto_passwd")
            for user, password in users.items():
                subprocess.run([tool, "-b", str(passwd), user, password], check=True)
            lines.append(f"password_file {passwd}")
        if tls is not None:
            lines += [
                f"cafile {tls.ca}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}",
                "require_certificate true",
            ]
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.path, "-c", str(self.conf)]


# -- InfluxDB 1.x ----------------------------------------------------------------------------
class InfluxDB1(Server):
    """``influxd`` 1.x with HTTP auth on; ``admin``/``password`` is created at start."""

    binary = "influxd"
    user = "admin"
    password = "s3cret-pw"

    def __init__(self, workdir: Path, port: int | None = None, auth: bool = True) -> None:
        super().__init__(workdir, port)
        self.auth = auth
        self.rpc_port = free_port()
        d = self.workdir
        self.conf = d / "influxdb.conf"
        self.conf.write_text(f"""
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {"true" if auth else "false"}
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
""")
        self._bootstrapped = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.path, "-config", str(self.conf)]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as reply:
                return reply.status == 204
        except OSError:
            return False

    def start(self) -> None:
        super().start()
        if self.auth and not self._bootstrapped:
            # With auth on and no user yet, InfluxDB allows exactly this statement unauthenticated.
            self.query(f"CREATE USER {self.user} WITH PASSWORD '{self.password}' "
                       "WITH ALL PRIVILEGES", auth=False)
            self._bootstrapped = True

    def query(self, q: str, db: str = "", auth: bool = True) -> Any:
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        data = urllib.parse.urlencode(params).encode()
        creds = urllib.parse.urlencode({"u": self.user, "p": self.password}) if (
            auth and self.auth) else ""
        with urllib.request.urlopen(f"{self.url}/query?{creds}", data=data, timeout=10) as reply:
            return json.loads(reply.read())

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def points(self, db: str, measurement: str) -> list[dict[str, Any]]:
        """Every point of ``measurement`` as dicts (time in ms), tags included."""
        out = self.query(f'SELECT * FROM "{measurement}"', db=db)
        series = out["results"][0].get("series") or []
        rows: list[dict[str, Any]] = []
        for s in series:
            cols = s["columns"]
            rows += [dict(zip(cols, values, strict=True)) for values in s["values"]]
        return rows


# -- VictoriaMetrics ----------------------------------------------------------------------
class VictoriaMetrics(Server):
    """Single-node VictoriaMetrics; takes the InfluxDB line protocol on /write and /api/v2/write."""

    binary = "victoria-metrics"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            self.path, f"-storageDataPath={self.workdir / 'data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y",
            "-search.latencyOffset=0s", "-loggerLevel=ERROR",
        ]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    def export(self, match: str) -> list[dict[str, Any]]:
        """Raw samples of the series matching ``match`` (one dict per series)."""
        # Fresh samples sit in memory for a few seconds before a search sees them.
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass
        query = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=10) as reply:
            return [json.loads(line) for line in reply.read().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """Run one server in the foreground for the demo, until SIGTERM or Ctrl-C.

    python -m pytests.servers mosquitto --port 1883
    python -m pytests.servers influxdb --port 8086 --database solar   (no auth)
    python -m pytests.servers victoria-metrics --port 8428
    """
    import argparse
    import tempfile
    import threading

    parser = argparse.ArgumentParser(description="a private server on 127.0.0.1 for the demo")
    parser.add_argument("server", choices=["mosquitto", "influxdb", "victoria-metrics"])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--dir", default="", help="data directory (default: a temporary one)")
    parser.add_argument("--database", default="solar", help="InfluxDB database to create")
    args = parser.parse_args(argv)
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pgw-server-"))
    server: Server
    if args.server == "mosquitto":
        server = Mosquitto(folder, args.port)
    elif args.server == "influxdb":
        server = InfluxDB1(folder, args.port, auth=False)
    else:
        server = VictoriaMetrics(folder, args.port)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with server:
        if isinstance(server, InfluxDB1):
            server.create_database(args.database)
        print(f"{args.server} on 127.0.0.1:{server.port}, data in {folder}", flush=True)
        try:
            while not done.wait(0.5):
                if server.proc is None or server.proc.poll() is not None:
                    return 1
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
