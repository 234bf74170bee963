"""Fetch a model version from peers: the signed manifest first, then the blob in ranged chunks.

The manifest's signature is checked before a byte of the blob is asked for, so the size and
sha256 the download is held to are the signer's. The blob is split into chunks that a few
worker threads fetch from several peers at once, the least busy peer first (ties go to the
earlier peer in the list, so callers order peers by preference: configured, then announced,
then an explicit source). A chunk that fails is retried on another peer from the byte where it
broke off; every byte that arrives is written to the store's `.part` file at once, so a later
run (after a crash, or with all peers gone) resumes where this one stopped. One token bucket
limits the rate across all workers. The blob moves into the store only after its size and
sha256 match: which peer sent wrong bytes cannot be known from a whole-file hash, so a mismatch
discards the whole download.

Only HTTP(S) through `http.client`, with a timeout on every socket operation; no redirects are
followed and nothing received is deserialised except JSON.
"""

from __future__ import annotations

import http.client
import logging
import math
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edge_agent.modelstore.signing import MAX_MANIFEST_BYTES, SignatureError, SignedManifest
from edge_agent.modelstore.store import (
    BlobMismatchError,
    ModelStore,
    PartialDownload,
    StoredModel,
    StoreError,
    check_sha256,
)

log = logging.getLogger(__name__)

_READ_BYTES = 64 << 10
_HTTP_OK, _HTTP_PARTIAL, _HTTP_UNAUTHORISED, _HTTP_NOT_FOUND = 200, 206, 401, 404


class FetchError(RuntimeError):
    """A version that could not be fetched from any peer; the message lists what each said."""


class _PeerRefusedError(Exception):
    """A peer that will not serve this blob during this fetch (401, 404, wrong size)."""


@dataclass(frozen=True)
class PeerAuth:
    """How this node proves itself to peers: a bearer token, a client certificate (in `tls`), or both."""

    token: bytes | None = None
    tls: ssl.SSLContext | None = None  # for https peers; from `client_tls_context`


def client_tls_context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Verify peers against `ca` (the system store when None); present `cert` for mutual TLS."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


@dataclass(frozen=True)
class FetchSettings:
    chunk_bytes: int = 1 << 20
    workers: int = 4
    rate_limit_bps: int | None = None  # across all workers; None: unlimited
    io_timeout_s: float = 10.0
    max_rounds: int = 3  # a chunk that every peer failed this many times fails the fetch
    retry_backoff_s: float = 0.5  # a peer that failed to connect is left alone this long (doubling)
    persist_every_s: float = 0.5


@dataclass
class FetchReport:
    sha256: str
    size_bytes: int
    resumed_bytes: int = 0  # already on disk from an earlier, interrupted run
    fetched_bytes: int = 0
    bytes_by_peer: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def rate_bps(self) -> float:
        return self.fetched_bytes / self.elapsed_s if self.elapsed_s > 0 else 0.0


class TokenBucket:
    """A byte-rate limit shared by threads: `reserve(n)` says how long to wait before using n bytes.

    Reservations may drive the bucket into debt, so callers are served in the order they asked
    and the long-run rate is exactly `rate_bps`; `burst_bytes` bounds how far ahead an idle
    bucket lets a caller run.
    """

    def __init__(self, rate_bps: float, burst_bytes: int = _READ_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_bps <= 0 or burst_bytes <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate_bps = rate_bps
        self.burst_bytes = burst_bytes
        self._clock = clock
        self._tokens = float(burst_bytes)
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self, n: int) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst_bytes, self._tokens + (now - self._stamp) * self.rate_bps)
            self._stamp = now
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_bps


def parse_peer_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a peer base URL like `https://10.0.0.7:8765`; nothing else is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"peer URL must be http(s)://host[:port], got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"peer URL must be a bare http(s)://host[:port], got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port


@dataclass
class _Peer:
    url: str
    rank: int
    inflight: int = 0
    down_until: float = 0.0
    strikes: int = 0
    fetched: int = 0


@dataclass
class _Chunk:
    start: int
    end: int
    tried: set[int] = field(default_factory=set)
    rounds: int = 0
    not_before: float = 0.0


class _Connections:
    """One keep-alive connection per peer, owned by one worker thread."""

    def __init__(self, auth: PeerAuth, timeout_s: float) -> None:
        self._auth = auth
        self._timeout_s = timeout_s
        self._open: dict[str, http.client.HTTPConnection] = {}

    def request(self, url: str, method: str, path: str,
                headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        sent = dict(headers or {})
        if self._auth.token is not None:
            sent["Authorization"] = "Bearer " + self._auth.token.decode("latin-1")
        reused = url in self._open
        try:
            return self._send(url, method, path, sent)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.drop(url)
            if not reused:
                raise
        # A kept-alive connection the peer closed while idle is normal, not the peer failing.
        try:
            return self._send(url, method, path, sent)
        except BaseException:
            self.drop(url)
            raise

    def _send(self, url: str, method: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        conn = self._open.get(url)
        if conn is None:
            scheme, host, port = parse_peer_url(url)
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=self._timeout_s,
                                                   context=self._auth.tls)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self._timeout_s)
            self._open[url] = conn
        try:
            conn.request(method, path, headers=headers)
            return conn.getresponse()
        except BaseException:
            self.drop(url)
            raise

    def drop(self, url: str) -> None:
        conn = self._open.pop(url, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for url in list(self._open):
            self.drop(url)


class _Download:
    """The shared state of one blob download: the chunk queue, the peers, and the first fatal error."""

    def __init__(self, fetcher: PeerFetcher, partial: PartialDownload, peers: Sequence[str],
                 stop: threading.Event, report: FetchReport) -> None:
        self.settings = fetcher.settings
        self.auth = fetcher.auth
        self.bucket = fetcher.bucket
        self.partial = partial
        self.stop = stop
        self.report = report
        self.peers = [_Peer(url, rank) for rank, url in enumerate(peers)]
        self.pending: deque[_Chunk] = deque(
            _Chunk(a, min(a + self.settings.chunk_bytes, end))
            for start, end in partial.missing() for a in range(start, end, self.settings.chunk_bytes))
        self.busy = 0
        self.error: FetchError | None = None
        self.cond = threading.Condition()

    def run(self) -> None:
        workers = [threading.Thread(target=self._worker, name=f"fetch-{i}", daemon=True)
                   for i in range(max(1, min(self.settings.workers, len(self.pending))))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()  # each ends once the queue drains, on the first fatal error, or on stop
        if self.error is not None:
            raise self.error
        if self.stop.is_set():
            raise FetchError(f"fetch of {self.partial.sha256[:12]} stopped; "
                             f"{self.partial.done_bytes} of {self.partial.size_bytes} bytes kept for resume")

    def _worker(self) -> None:
        conns = _Connections(self.auth, self.settings.io_timeout_s)
        try:
            while (job := self._next()) is not None:
                chunk, peer = job
                failure: BaseException | None = None
                try:
                    self._fetch(conns, peer, chunk)
                except (OSError, http.client.HTTPException, _PeerRefusedError, StoreError) as exc:
                    conns.drop(peer.url)
                    failure = exc
                self._done(chunk, peer, failure)
        finally:
            conns.close()

    def _next(self) -> tuple[_Chunk, _Peer] | None:
        """The next chunk and the peer to ask, waiting while every usable peer is backing off."""
        with self.cond:
            while self.error is None and not self.stop.is_set():
                if not self.pending:
                    if self.busy == 0:
                        return None
                    self.cond.wait(0.5)
                    continue
                now = time.monotonic()
                chunk = self.pending[0]
                untried = [p for p in self.peers if p.rank not in chunk.tried and not math.isinf(p.down_until)]
                if not untried:
                    self._next_round(chunk, now)
                    continue
                ready = [p for p in untried if p.down_until <= now]
                if ready and chunk.not_before <= now:
                    peer = min(ready, key=lambda p: (p.inflight, p.rank))
                    self.pending.popleft()
                    peer.inflight += 1
                    self.busy += 1
                    return chunk, peer
                wake = max(chunk.not_before, min(p.down_until for p in untried))
                self.cond.wait(max(0.01, wake - now))
            return None

    def _next_round(self, chunk: _Chunk, now: float) -> None:
        chunk.rounds += 1
        if chunk.rounds >= self.settings.max_rounds or all(math.isinf(p.down_until) for p in self.peers):
            self.error = FetchError(
                f"no peer could serve bytes {chunk.start}-{chunk.end - 1} of {self.partial.sha256[:12]} "
                f"after {chunk.rounds} round(s); {self.partial.done_bytes} of {self.partial.size_bytes} "
                f"bytes kept for resume; failures: {'; '.join(self.report.failures[-6:]) or 'none'}")
            self.cond.notify_all()
            return
        chunk.tried.clear()
        chunk.not_before = now + self.settings.retry_backoff_s * 2 ** (chunk.rounds - 1)

    def _done(self, chunk: _Chunk, peer: _Peer, failure: BaseException | None) -> None:
        with self.cond:
            peer.inflight -= 1
            self.busy -= 1
            if failure is None:
                peer.strikes = 0
            else:
                reason = f"{peer.url}: {type(failure).__name__}: {failure}"
                self.report.failures.append(reason)
                log.warning("fetch %s: %s", self.partial.sha256[:12], reason)
                if isinstance(failure, _PeerRefusedError):
                    peer.down_until = math.inf
                else:
                    peer.strikes += 1
                    peer.down_until = time.monotonic() + self.settings.retry_backoff_s * 2 ** (peer.strikes - 1)
                chunk.tried.add(peer.rank)
                if chunk.start < chunk.end:
                    self.pending.appendleft(chunk)
            self.cond.notify_all()

    def _fetch(self, conns: _Connections, peer: _Peer, chunk: _Chunk) -> None:
        size, sha = self.partial.size_bytes, self.partial.sha256
        resp = conns.request(peer.url, "GET", f"/v1/blobs/{sha}",
                             {"Range": f"bytes={chunk.start}-{chunk.end - 1}"})
        if resp.status in (_HTTP_UNAUTHORISED, _HTTP_NOT_FOUND):
            raise _PeerRefusedError(f"HTTP {resp.status} {resp.reason}")
        expected_range = f"bytes {chunk.start}-{chunk.end - 1}/{size}"
        if resp.status != _HTTP_PARTIAL or resp.getheader("Content-Range") != expected_range:
            raise _PeerRefusedError(f"HTTP {resp.status}, Content-Range {resp.getheader('Content-Range')!r}; "
                                    f"expected 206 with {expected_range!r}")
        while chunk.start < chunk.end:
            want = min(_READ_BYTES, chunk.end - chunk.start)
            if self.bucket is not None and self.stop.wait(self.bucket.reserve(want)):
                raise OSError("stopped")
            block = resp.read(want)
            if not block:
                raise http.client.IncompleteRead(b"", chunk.end - chunk.start)
            self.partial.write(chunk.start, block)
            chunk.start += len(block)
            with self.cond:
                peer.fetched += len(block)
                self.report.fetched_bytes += len(block)
                self.report.bytes_by_peer[peer.url] = peer.fetched


class PeerFetcher:
    """Pulls versions into a store from peers; one instance may serve many pulls, one at a time."""

    def __init__(self, store: ModelStore, auth: PeerAuth, settings: FetchSettings | None = None) -> None:
        self.store = store
        self.auth = auth
        self.settings = settings or FetchSettings()
        rate = self.settings.rate_limit_bps
        self.bucket = TokenBucket(rate) if rate else None

    def fetch_manifest(self, sha256: str, peers: Sequence[str]) -> SignedManifest:
        """The first envelope for `sha256` that a peer serves and the store's keys accept."""
        check_sha256(sha256)
        failures = []
        for url in peers:
            try:
                return self._manifest_from(url, sha256)
            except (OSError, ValueError, http.client.HTTPException, _PeerRefusedError,
                    SignatureError, StoreError) as exc:
                failures.append(f"{url}: {exc}")
        raise FetchError(f"no peer gave a valid manifest for {sha256[:12]}: {'; '.join(failures) or 'no peers'}")

    def _manifest_from(self, url: str, sha256: str) -> SignedManifest:
        conns = _Connections(self.auth, self.settings.io_timeout_s)
        try:
            resp = conns.request(url, "GET", f"/v1/manifests/{sha256}")
            body = resp.read(MAX_MANIFEST_BYTES + 1)
        finally:
            conns.close()
        if resp.status != _HTTP_OK:
            raise _PeerRefusedError(f"HTTP {resp.status} {resp.reason}")
        signed = SignedManifest.from_json(body)
        if signed.sha256 != sha256:
            raise _PeerRefusedError(f"served the manifest of {signed.sha256[:12]}")
        self.store.check_signed(signed)
        return signed

    def fetch_blob(self, sha256: str, size_bytes: int, peers: Sequence[str],
                   stop: threading.Event | None = None) -> FetchReport:
        """Download (or resume) the blob into the store; raises FetchError, keeping the progress."""
        report = FetchReport(sha256, size_bytes)
        if self.store.has_blob(sha256):
            return report
        if not peers:
            raise FetchError(f"no peers to fetch {sha256[:12]} from")
        started = time.monotonic()
        partial = self.store.open_partial(sha256, size_bytes, self.settings.persist_every_s)
        report.resumed_bytes = partial.resumed_bytes
        try:
            _Download(self, partial, peers, stop or threading.Event(), report).run()
            self.store.commit_partial(partial)
        except BlobMismatchError as exc:
            raise FetchError(f"download of {sha256[:12]} discarded, a peer sent wrong bytes: {exc}") from exc
        finally:
            partial.close()
            report.elapsed_s = time.monotonic() - started
        log.info("fetched %s: %d bytes in %.2f s (%d resumed) from %s", sha256[:12], report.fetched_bytes,
                 report.elapsed_s, report.resumed_bytes, report.bytes_by_peer)
        return report

    def pull(self, sha256: str, peers: Sequence[str], signed: SignedManifest | None = None,
             stop: threading.Event | None = None) -> tuple[StoredModel, FetchReport]:
        """Manifest (given, e.g. by an MQTT command, or fetched), then blob; returns the store entry."""
        if signed is None:
            signed = self.fetch_manifest(sha256, peers)
        if signed.sha256 != sha256:
            raise FetchError(f"manifest names {signed.sha256[:12]}, not {sha256[:12]}")
        manifest = self.store.add_manifest(signed)  # checks the signature first
        report = self.fetch_blob(sha256, manifest.size_bytes, peers, stop)
        return self.store.get(sha256), report
