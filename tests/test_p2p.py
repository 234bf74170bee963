"""Models between nodes: the peer server's API and its refusals, the fetcher, and three nodes as processes.

Nodes A and B are `python -m edge_agent.p2p.server` processes on loopback ports; C pulls with the
CLI in its own process (or with the fetcher in this one, where the test needs its report). A is
killed in the middle of C's transfer; the rate limit makes the transfer slow enough that "the
middle" is reached for sure, and the test waits on C's `.part` sidecar, not on a clock.
"""

import datetime as dt
import hashlib
import http.client
import ipaddress
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.devtools.mosquitto import MosquittoServer, mosquitto_unavailable
from edge_agent.modelstore.signing import (
    SignedManifest,
    TrustedKeys,
    generate_keypair,
    load_private_key,
    sign_manifest,
)
from edge_agent.modelstore.store import ModelStore, StoreError
from edge_agent.p2p.announce import (
    AnnounceError,
    build_announcement,
    build_pull_command,
    holders,
    parse_announcement,
    parse_pull_command,
    peer_order,
)
from edge_agent.p2p.fetch import FetchError, FetchSettings, PeerAuth, PeerFetcher, TokenBucket, client_tls_context
from edge_agent.p2p.server import PeerServer, ServerSettings, parse_range, server_tls_context

TOKEN = b"peer-token-for-tests"
START_TIMEOUT_S = 20.0
TRANSFER_TIMEOUT_S = 90.0
POLL_S = 0.02  # how often a bounded wait looks again at a file another process writes


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    generate_keypair(folder / "fleet.key", folder / "fleet.pub")
    return folder / "fleet.key", folder / "fleet.pub"


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "peer.token"
    path.write_bytes(TOKEN + b"\n")
    return path


@pytest.fixture
def store_a(tmp_path, keys, demo_model, demo_manifest):
    """Node A's store with the shipped model imported and signed by the fleet key."""
    private, public = keys
    store = ModelStore(tmp_path / "a", TrustedKeys.from_files([public]))
    store.import_model(demo_model, sign_manifest(demo_manifest.to_dict(), load_private_key(private)))
    return store


def _get(url, path, *, token=TOKEN, method="GET", headers=None, context=None):
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    cls = http.client.HTTPSConnection if url.startswith("https") else http.client.HTTPConnection
    kwargs = {"context": context} if context is not None else {}
    conn = cls(host, int(port), timeout=10, **kwargs)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = "Bearer " + token.decode()
    try:
        conn.request(method, path, headers=sent)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def served(store_a):
    server = PeerServer(store_a, ServerSettings(token=TOKEN))
    server.start()
    yield server
    server.stop()


# -- the server in this process ------------------------------------------------------------------

def test_requests_without_valid_credentials_get_401(served, demo_manifest):
    """No token, a wrong one, or another scheme: 401 for every path, before the path is looked at."""
    sha = demo_manifest.sha256
    for path in (f"/v1/blobs/{sha}", f"/v1/manifests/{sha}", "/nothing", "/v1/blobs/../../etc/passwd"):
        assert _get(served.url, path, token=None)[0] == 401
        assert _get(served.url, path, token=b"wrong")[0] == 401
        assert _get(served.url, path, token=None, headers={"Authorization": "Basic " + TOKEN.decode()})[0] == 401
    status, headers, _ = _get(served.url, f"/v1/blobs/{sha}", token=None, method="HEAD")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert _get(served.url, f"/v1/manifests/{sha}")[0] == 200


def test_blobs_are_served_whole_and_by_range(served, demo_model, demo_manifest):
    """200 with the whole file; 206 with Content-Range for a range; HEAD gives the headers only."""
    sha, data = demo_manifest.sha256, demo_model.read_bytes()
    size = len(data)
    status, headers, body = _get(served.url, f"/v1/blobs/{sha}")
    assert (status, body, headers["ETag"]) == (200, data, f'"{sha}"')
    cases = {"bytes=0-9": (0, 10), "bytes=100-": (100, size), "bytes=-5": (size - 5, size),
             f"bytes={size - 3}-{size + 50}": (size - 3, size)}
    for header, (start, end) in cases.items():
        status, headers, body = _get(served.url, f"/v1/blobs/{sha}", headers={"Range": header})
        assert status == 206, header
        assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        assert body == data[start:end]
    status, headers, body = _get(served.url, f"/v1/blobs/{sha}", method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, str(size), b"")


@pytest.mark.parametrize("header", ["bytes=99999999999-", "bytes=5-2", "bytes=0-1,3-4", "bytes=-0",
                                    "items=0-5", "bytes=-", "bytes=a-b"])
def test_unsatisfiable_ranges_get_416(served, demo_manifest, header):
    status, headers, _ = _get(served.url, f"/v1/blobs/{demo_manifest.sha256}", headers={"Range": header})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{demo_manifest.size_bytes}"


def test_parse_range_table():
    assert parse_range("bytes=0-0", 10) == (0, 1)
    assert parse_range("bytes=9-", 10) == (9, 10)
    assert parse_range("bytes=-20", 10) == (0, 10)
    assert parse_range("bytes=10-", 10) is None
    assert parse_range("bytes=0-5", 0) is None


def _paths_outside_the_api(sha):
    return [
        "/v1/blobs/../../etc/passwd", "/v1/blobs/..%2f..%2fetc%2fpasswd", "/v1/manifests/../active",
        f"/v1/blobs/{sha.upper()}", f"/v1/blobs/{sha}/", f"/v1/blobs/{sha}?x=1", f"/v1/blobs/{sha[:-1]}",
        f"/v1/blobs/{sha}0", f"/v1/blobs//{sha}", "/", "/v1/blobs/",
        f"/v1/blobs/{'0' * 64}", f"/v1/manifests/{'0' * 64}", f"/v1/partial/{sha}.part",
    ]


def test_anything_but_an_exact_sha256_is_404(served, demo_manifest):
    """Traversal, encodings, case, suffixes and unknown hashes all get 404; other methods 501."""
    for path in _paths_outside_the_api(demo_manifest.sha256):
        assert _get(served.url, path)[0] == 404, path
    assert _get(served.url, f"/v1/blobs/{demo_manifest.sha256}", method="POST")[0] == 501


def test_a_slow_client_is_disconnected(store_a):
    """A client that sends half a request and stalls is cut off after the I/O timeout."""
    server = PeerServer(store_a, ServerSettings(token=TOKEN, io_timeout_s=0.5))
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /v1/blobs/")
            assert sock.recv(100) == b""  # closed by the server, well inside our 10 s
    finally:
        server.stop()


def test_server_refuses_to_start_without_credentials(store_a):
    with pytest.raises(ValueError, match="token"):
        PeerServer(store_a, ServerSettings())


# -- mutual TLS -----------------------------------------------------------------------------------

def _cert(subject, issuer_key, issuer_name, key, *, ca=False, server=False):
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(folder, name, cert, key):
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder / f"{name}.crt", folder / f"{name}.key"


@pytest.fixture
def pki(tmp_path):
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a stranger's client cert."""
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet CA")])
    ca = _cert("fleet CA", ca_key, ca_name, ca_key, ca=True)
    out = {"ca": _write_pem(folder, "ca", ca, ca_key)[0]}
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        out[name] = _write_pem(folder, name, _cert(name, ca_key, ca_name, key, server=server), key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    out["stranger"] = _write_pem(folder, "stranger", _cert("stranger", other_key, other_name, key), key)
    return out


def test_mutual_tls_admits_only_fleet_certificates(tmp_path, pki, keys, store_a, demo_manifest):
    """No client certificate: 401. A stranger's: the handshake fails. The fleet's: the pull works."""
    tls = server_tls_context(*pki["server"], client_ca=pki["ca"])
    server = PeerServer(store_a, ServerSettings(tls=tls, require_client_cert=True))
    server.start()
    try:
        path = f"/v1/manifests/{demo_manifest.sha256}"
        anonymous = client_tls_context(pki["ca"])
        assert _get(server.url, path, token=None, context=anonymous)[0] == 401
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
            _get(server.url, path, token=None, context=client_tls_context(pki["ca"], *pki["stranger"]))
        store_c = ModelStore(tmp_path / "c", TrustedKeys.from_files([keys[1]]))
        auth = PeerAuth(tls=client_tls_context(pki["ca"], *pki["client"]))
        entry, report = PeerFetcher(store_c, auth).pull(demo_manifest.sha256, [server.url])
        assert entry.blob.read_bytes() == store_a.blob_path(demo_manifest.sha256).read_bytes()
        assert report.bytes_by_peer == {server.url: demo_manifest.size_bytes}
    finally:
        server.stop()


# -- the rate limit --------------------------------------------------------------------------------

def test_token_bucket_spreads_reservations_at_the_rate():
    """With a fake clock: the burst is free, then each reservation waits for its bytes at the rate."""
    now = [0.0]
    bucket = TokenBucket(1000, burst_bytes=100, clock=lambda: now[0])
    assert bucket.reserve(100) == 0
    assert bucket.reserve(100) == pytest.approx(0.1)
    assert bucket.reserve(50) == pytest.approx(0.15)  # queued behind the first waiter
    now[0] = 10.0
    assert bucket.reserve(100) == 0  # refilled, but never beyond the burst
    assert bucket.reserve(1) == pytest.approx(0.001)


def test_transfer_honours_the_rate_limit(tmp_path, keys, served, demo_manifest):
    """A pull limited to 4 MiB/s takes at least size/rate; the report shows the measured rate."""
    rate = 4 << 20
    store_c = ModelStore(tmp_path / "c", TrustedKeys.from_files([keys[1]]))
    settings = FetchSettings(rate_limit_bps=rate, chunk_bytes=256 << 10, workers=3)
    _, report = PeerFetcher(store_c, PeerAuth(token=TOKEN), settings).pull(demo_manifest.sha256, [served.url])
    floor_s = (demo_manifest.size_bytes - (64 << 10)) / rate
    print(f"rate limit {rate} B/s: {report.fetched_bytes} B in {report.elapsed_s:.2f} s = {report.rate_bps:.0f} B/s")
    assert report.elapsed_s >= floor_s
    assert report.rate_bps <= rate * 1.05


# -- three nodes as processes ---------------------------------------------------------------------

class ServerProcess:
    """`python -m edge_agent.p2p.server` on a free loopback port; `url` once it listens."""

    def __init__(self, store: Path, token_file: Path, log_path: Path) -> None:
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.p2p.server", "--store", str(store), "--port", "0",
             "--token-file", str(token_file)], stdout=subprocess.PIPE, stderr=self._log)
        self.url = self._first_line(START_TIMEOUT_S)

    def _first_line(self, timeout_s: float) -> str:
        deadline, out = time.monotonic() + timeout_s, b""
        while b"\n" not in out:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0, remaining))
            if not ready:
                self.kill()
                raise RuntimeError("peer server did not start in time")
            block = os.read(self.proc.stdout.fileno(), 1024)
            if not block:
                raise RuntimeError(f"peer server exited with {self.proc.wait(5)}")
            out += block
        return out.decode().strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def nodes(tmp_path, store_a, token_file):
    """Servers for A (holding the model) and B (empty, so far)."""
    started = []

    def start(name):
        server = ServerProcess(tmp_path / name, token_file, tmp_path / f"{name}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def _cli(*args, timeout_s=TRANSFER_TIMEOUT_S):
    return subprocess.run([sys.executable, "-m", "edge_agent.commands.model_store", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def _wait_for_sidecar_bytes(sidecar: Path, at_least: int, timeout_s: float) -> int:
    """Bounded wait until another process's download sidecar records `at_least` bytes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done = sum(b - a for a, b in json.loads(sidecar.read_text())["done"])
        except (FileNotFoundError, ValueError, KeyError):
            done = 0
        if done >= at_least:
            return done
        time.sleep(POLL_S)
    raise AssertionError(f"{sidecar} did not reach {at_least} bytes in {timeout_s} s")


def test_b_and_c_pull_from_a_and_c_resumes_from_b_after_a_dies(tmp_path, keys, token_file, nodes,
                                                              demo_manifest):
    """B pulls from A. C pulls slowly from A; A is killed mid-transfer; C stops, keeping its bytes;
    a second run of C fetches only the rest, from B, and ends with the verified blob."""
    sha, size = demo_manifest.sha256, demo_manifest.size_bytes
    trust = ["--trusted-key", keys[1]]
    a, b = nodes("a"), nodes("b")
    done = _cli("pull", "--store", tmp_path / "b", *trust, "--peer", a.url, "--token-file", token_file, sha)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bytes_by_peer"] == {a.url: size}
    assert _get(b.url, f"/v1/blobs/{sha}", method="HEAD")[0] == 200

    slow = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.commands.model_store", "pull", "--store", str(tmp_path / "c"),
         *map(str, trust), "--peer", a.url, "--token-file", str(token_file), "--rate-limit", "2M",
         "--chunk", "256K", "--workers", "2", sha], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sidecar = tmp_path / "c" / "partial" / f"{sha}.part.json"
    before_kill = _wait_for_sidecar_bytes(sidecar, 1 << 20, TRANSFER_TIMEOUT_S)
    a.kill()
    out, err = slow.communicate(timeout=TRANSFER_TIMEOUT_S)
    assert slow.returncode == 1, out + err
    assert "kept for resume" in err
    kept = sum(b - a for a, b in json.loads(sidecar.read_text())["done"])
    assert before_kill <= kept < size

    resumed = _cli("pull", "--store", tmp_path / "c", *trust, "--peer", a.url, "--peer", b.url,
                   "--token-file", token_file, sha)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    print(f"C kept {kept} of {size} bytes when A died; resumed from B with {report['fetched_bytes']} bytes")
    assert report["resumed_bytes"] == kept
    assert report["fetched_bytes"] == size - kept
    assert report["bytes_by_peer"] == {b.url: size - kept}
    assert hashlib.sha256((tmp_path / "c" / "blobs" / "sha256" / sha).read_bytes()).hexdigest() == sha
    assert not sidecar.exists()


def test_a_dying_mid_transfer_moves_its_chunks_to_b(tmp_path, keys, nodes, demo_manifest):
    """C pulls from A and B at once; A is killed while serving; C finishes from B in the same run."""
    sha, size = demo_manifest.sha256, demo_manifest.size_bytes
    a, b = nodes("a"), nodes("b")
    (tmp_path / "b").mkdir(exist_ok=True)
    ModelStore(tmp_path / "b").import_model(ModelStore(tmp_path / "a").blob_path(sha),
                                            ModelStore(tmp_path / "a").load_signed(sha))
    store_c = ModelStore(tmp_path / "c", TrustedKeys.from_files([keys[1]]))
    settings = FetchSettings(rate_limit_bps=4 << 20, chunk_bytes=256 << 10, workers=4, persist_every_s=0.05)
    fetcher = PeerFetcher(store_c, PeerAuth(token=TOKEN), settings)
    result = {}

    def pull():
        result["entry"], result["report"] = fetcher.pull(sha, [a.url, b.url])

    worker = threading.Thread(target=pull)
    worker.start()
    _wait_for_sidecar_bytes(tmp_path / "c" / "partial" / f"{sha}.part.json", 1 << 20, TRANSFER_TIMEOUT_S)
    a.kill()
    worker.join(TRANSFER_TIMEOUT_S)
    report = result["report"]
    print(f"A served {report.bytes_by_peer.get(a.url)} B before it died, B {report.bytes_by_peer[b.url]} B; "
          f"{len(report.failures)} failed attempts")
    assert report.bytes_by_peer[a.url] > 0
    assert any(f.startswith(a.url) for f in report.failures)
    assert report.bytes_by_peer[a.url] + report.bytes_by_peer[b.url] == size
    assert result["entry"].blob.stat().st_size == size


def test_a_tampered_blob_is_rejected(tmp_path, keys, nodes, store_a, demo_manifest):
    """A serves a blob with one byte changed: C's download fails its hash and leaves nothing behind."""
    sha = demo_manifest.sha256
    blob = store_a.blob_path(sha)
    data = bytearray(blob.read_bytes())
    data[len(data) // 3] ^= 0xFF
    blob.write_bytes(bytes(data))
    a = nodes("a")
    store_c = ModelStore(tmp_path / "c", TrustedKeys.from_files([keys[1]]))
    with pytest.raises(FetchError, match="wrong bytes"):
        PeerFetcher(store_c, PeerAuth(token=TOKEN)).pull(sha, [a.url])
    assert not store_c.has_blob(sha)
    assert list((tmp_path / "c" / "partial").iterdir()) == []


def test_a_manifest_signed_with_an_unknown_key_is_rejected(tmp_path, keys, nodes, demo_model, demo_manifest):
    """A holds a version signed by a stranger: C refuses its manifest and fetches no blob bytes."""
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    generate_keypair(stranger / "k", stranger / "p")
    signed = sign_manifest(demo_manifest.to_dict(), load_private_key(stranger / "k"))
    ModelStore(tmp_path / "a").import_model(demo_model, signed)  # A checks no signatures
    a = nodes("a")
    store_c = ModelStore(tmp_path / "c", TrustedKeys.from_files([keys[1]]))
    fetcher = PeerFetcher(store_c, PeerAuth(token=TOKEN))
    with pytest.raises(FetchError, match="unknown key"):
        fetcher.pull(demo_manifest.sha256, [a.url])
    with pytest.raises(StoreError, match="unknown key"):  # the same manifest arriving in a command
        fetcher.pull(demo_manifest.sha256, [a.url], signed=signed)
    assert list((tmp_path / "c" / "partial").iterdir()) == []
    assert not store_c.has_blob(demo_manifest.sha256)


def test_unauthenticated_requests_to_a_node_get_401(nodes, tmp_path, keys, demo_manifest):
    """A node process answers 401 to a request without the token, and the CLI reports the refusal."""
    a = nodes("a")
    assert _get(a.url, f"/v1/blobs/{demo_manifest.sha256}", token=None)[0] == 401
    result = _cli("pull", "--store", tmp_path / "c", "--trusted-key", keys[1], "--peer", a.url,
                  demo_manifest.sha256)
    assert result.returncode == 1
    assert "401" in result.stderr


# -- the model topics -----------------------------------------------------------------------------

def test_announcement_round_trip_and_holders(demo_manifest):
    sha = demo_manifest.sha256
    payload = build_announcement(
        "node-a", "https://10.0.0.7:8765",
        {"name": "demo-parts", "version": "1.0.0", "sha256": sha, "since": "2026-01-01T00:00:00Z"},
        [sha], [{"time": "t", "action": "activate", "sha256": sha, "name": "demo-parts", "version": "1",
                 "reason": "import"}])
    parsed = parse_announcement(payload)
    assert json.loads(payload)["schema"] == 1
    assert parsed.active is not None
    assert parsed.active.sha256 == sha
    other = parse_announcement(build_announcement("node-b", "http://10.0.0.8:8765", None, []))
    assert holders([parsed, other], sha) == ["https://10.0.0.7:8765"]
    assert holders([parsed], sha, exclude_node="node-a") == []
    assert peer_order(["http://p:1"], ["https://10.0.0.7:8765", "http://p:1"], ["http://s:2"]) == [
        "http://p:1", "https://10.0.0.7:8765", "http://s:2"]


@pytest.mark.parametrize("payload", [
    b"not json", b'{"node": "a", "held": ["xyz"]}', b'{"node": "a/b"}',
    b'{"node": "a", "peer_url": "file:///etc/passwd"}', b'{"node": "a", "peer_url": "http://u:p@h:1"}',
    b'{"node": "a", "pad": "' + b"x" * (300 << 10) + b'"}',
])
def test_invalid_announcements_are_refused(payload):
    with pytest.raises(AnnounceError):
        parse_announcement(payload)


def test_pull_command_round_trip(keys, demo_manifest):
    signed = sign_manifest(demo_manifest.to_dict(), load_private_key(keys[0]))
    command, parsed = parse_pull_command(build_pull_command(signed, ["http://10.0.0.7:8765"], "r1"))
    assert parsed == signed
    assert command.sources == ("http://10.0.0.7:8765",)
    assert TrustedKeys.from_files([keys[1]]).verify(parsed)
    with pytest.raises(AnnounceError):
        parse_pull_command(b'{"signed_manifest": {"schema": 1}}')


@pytest.mark.integration
def test_push_publishes_the_signed_manifest_to_each_node(tmp_path, keys, store_a, demo_manifest):
    """`model push` puts a pull command with the signed manifest on each target node's topic."""
    reason = mosquitto_unavailable()
    if reason:
        pytest.skip(reason)
    with MosquittoServer() as broker:
        got, subscribed = {}, threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = lambda _c, _u, msg: got.setdefault(msg.topic, msg.payload)
        client.connect(broker.host, broker.port)
        client.subscribe("edge/+/cmd/model/pull", qos=1)
        client.loop_start()
        try:
            assert subscribed.wait(10)
            result = _cli("push", "--store", tmp_path / "a", demo_manifest.sha256[:12], "--node", "n1",
                          "--node", "n2", "--broker", f"{broker.host}:{broker.port}", timeout_s=30)
            assert result.returncode == 0, result.stderr
            deadline = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < deadline:
                time.sleep(POLL_S)
        finally:
            client.loop_stop()
            client.disconnect()
    assert set(got) == {"edge/n1/cmd/model/pull", "edge/n2/cmd/model/pull"}
    _, signed = parse_pull_command(got["edge/n1/cmd/model/pull"])
    assert isinstance(signed, SignedManifest)
    assert TrustedKeys.from_files([keys[1]]).verify(signed)
    assert signed.sha256 == demo_manifest.sha256
