"""The peer server: a node's model store, read-only, to authenticated peers over HTTP(S).

    GET|HEAD /v1/blobs/<sha256>       the ONNX bytes; `Range: bytes=a-b` gives 206 (or 416)
    GET|HEAD /v1/manifests/<sha256>   the signed-manifest envelope (JSON)

Anything else is 404, and every request without valid credentials is 401 before the path is
looked at. The only thing taken from a request path is a 64-hex sha256 matched whole, which the
store turns into a file name; there is no path input to traverse with. Only complete, verified
blobs are served (never a `.part`).

Credentials: a bearer token (compared in constant time), a client certificate verified against a
CA (mutual TLS), or both; with both, both are required. A server with neither refuses to start.
Slow clients are bounded three ways: a socket timeout per read and write, a minimum transfer rate
per response, and a cap on concurrent connections beyond which new ones are closed at once.

    python -m edge_agent.p2p.server --store DIR --port N --token-file F
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import re
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO, Protocol

from edge_agent.modelstore.store import ModelStore

log = logging.getLogger(__name__)

_BLOB = re.compile(r"/v1/blobs/([0-9a-f]{64})")
_MANIFEST = re.compile(r"/v1/manifests/([0-9a-f]{64})")
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
_SEND_BYTES = 64 << 10
MAX_TOKEN_BYTES = 4096


class ServedStore(Protocol):
    """What the server needs of a store: complete blobs and manifests by exact sha256."""

    def open_blob(self, sha256: str) -> BinaryIO | None: ...

    def manifest_bytes(self, sha256: str) -> bytes | None: ...


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port; `PeerServer.port` says which
    token: bytes | None = None
    tls: ssl.SSLContext | None = None  # from `server_tls_context`
    require_client_cert: bool = False
    io_timeout_s: float = 10.0
    min_rate_bps: int = 8 << 10  # a response slower than this (after io_timeout_s of grace) is cut
    max_connections: int = 32


def read_token_file(path: Path) -> bytes:
    """The bearer token in `path` (surrounding whitespace stripped); refuses empty or huge files."""
    with path.open("rb") as fh:
        token = fh.read(MAX_TOKEN_BYTES + 1).strip()
    if not token or len(token) > MAX_TOKEN_BYTES:
        raise ValueError(f"{path}: a token must be 1..{MAX_TOKEN_BYTES} bytes")
    return token


def server_tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """TLS for the server; with `client_ca`, clients that present a certificate must chain to it.

    CERT_OPTIONAL rather than REQUIRED so that a client without a certificate gets a 401 it can
    read instead of a failed handshake; a certificate that does not verify still fails the
    handshake, and `require_client_cert` makes the 401 happen.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end_exclusive) for a single `bytes=` range, None when unsatisfiable or malformed."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        return (max(0, size - n), size) if n > 0 else None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        return None
    return start, end


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, settings: ServerSettings, store: ServedStore) -> None:
        self.settings = settings
        self.store = store
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        if ":" in settings.host:
            self.address_family = socket.AF_INET6
        super().__init__((settings.host, settings.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can hang an offline box.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.settings.host, self.server_address[1]

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket],
                        client_address: tuple[str, int] | str) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("peer server: %s refused, %d connections open", client_address,
                        self.settings.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket | tuple[bytes, socket.socket],
                               client_address: tuple[str, int] | str) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: socket.socket | tuple[bytes, socket.socket],
                       client_address: tuple[str, int] | str) -> None:
        # The TLS handshake runs here, in the connection's own thread and under its timeout,
        # not in the accept loop where one stalled client would block every other.
        assert isinstance(request, socket.socket)
        request.settimeout(self.settings.io_timeout_s)
        if self.settings.tls is None:
            _Handler(request, client_address, self)
            return
        with self.settings.tls.wrap_socket(request, server_side=True) as tls_socket:
            _Handler(tls_socket, client_address, self)

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket],  # noqa: ARG002
                     client_address: tuple[str, int] | str) -> None:
        # Failed handshakes, resets and timeouts are what peers on a network do; no tracebacks.
        exc = sys.exc_info()[1]
        log.info("peer server: connection from %s ended: %s", client_address, exc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edge-agent-peer"
    sys_version = ""
    server: _HTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib's name)
        log.debug("peer server: %s %s", self.address_string(), format % args)

    def _authorised(self) -> bool:
        settings = self.server.settings
        if settings.token is not None:
            header = self.headers.get("Authorization", "")
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    value.strip().encode("latin-1", "replace"), settings.token):
                return False
        if settings.require_client_cert:
            cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
            if not cert:
                return False
        return True

    def _reply(self, status: HTTPStatus, body: bytes = b"", headers: dict[str, str] | None = None,
               *, head: bool = False) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="edge-agent"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        if not self._authorised():
            self._reply(HTTPStatus.UNAUTHORIZED, b"unauthorised\n", head=head)
            return
        if match := _BLOB.fullmatch(self.path):
            self._blob(match.group(1), head=head)
        elif match := _MANIFEST.fullmatch(self.path):
            body = self.server.store.manifest_bytes(match.group(1))
            if body is None:
                self._reply(HTTPStatus.NOT_FOUND, b"no such manifest\n", head=head)
            else:
                self._reply(HTTPStatus.OK, body, {"Content-Type": "application/json"}, head=head)
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n", head=head)

    def _blob(self, sha256: str, *, head: bool) -> None:
        fh = self.server.store.open_blob(sha256)
        if fh is None:
            self._reply(HTTPStatus.NOT_FOUND, b"no such blob\n", head=head)
            return
        with fh:
            size = os.fstat(fh.fileno()).st_size
            headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha256}"',
                       "Content-Type": "application/octet-stream",
                       "Cache-Control": "public, max-age=31536000, immutable"}
            start, end, status = 0, size, HTTPStatus.OK
            range_header = self.headers.get("Range")
            if range_header is not None:
                wanted = parse_range(range_header, size)
                if wanted is None:
                    self._reply(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"",
                                {"Content-Range": f"bytes */{size}"}, head=head)
                    return
                start, end = wanted
                status = HTTPStatus.PARTIAL_CONTENT
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            if not head:
                self._send_file(fh, start, end)

    def _send_file(self, fh: BinaryIO, start: int, end: int) -> None:
        settings = self.server.settings
        deadline = time.monotonic() + settings.io_timeout_s + (end - start) / settings.min_rate_bps
        fh.seek(start)
        remaining = end - start
        while remaining > 0:
            block = fh.read(min(_SEND_BYTES, remaining))
            if not block:
                raise OSError("blob shrank while being served")
            self.wfile.write(block)
            remaining -= len(block)
            if time.monotonic() > deadline:
                self.close_connection = True
                raise TimeoutError(f"client slower than {settings.min_rate_bps} bytes/s")


class PeerServer:
    """The HTTP server in a background thread: `start()`, `url`, `stop()`."""

    def __init__(self, store: ServedStore, settings: ServerSettings) -> None:
        if settings.token is None and not settings.require_client_cert:
            raise ValueError("the peer server needs a token, client certificates, or both")
        if settings.require_client_cert and settings.tls is None:
            raise ValueError("client certificates need TLS")
        self._httpd = _HTTPServer(settings, store)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        port: int = self._httpd.server_address[1]
        return port

    @property
    def url(self) -> str:
        scheme = "https" if self._httpd.settings.tls is not None else "http"
        return f"{scheme}://{self._httpd.settings.host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="peer-server", daemon=True)
        self._thread.start()
        log.info("peer server listening on %s", self.url)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout_s)
            self._thread = None
        self._httpd.server_close()


def main(argv: list[str] | None = None) -> int:
    """Serve a store until SIGTERM/SIGINT; prints the URL on one line once it listens."""
    p = argparse.ArgumentParser(prog="python -m edge_agent.p2p.server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--token-file", type=Path)
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--client-ca", type=Path, help="require client certificates signed by this CA")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls = server_tls_context(args.tls_cert, args.tls_key, args.client_ca) if args.tls_cert else None
    settings = ServerSettings(host=args.host, port=args.port, tls=tls,
                              token=read_token_file(args.token_file) if args.token_file else None,
                              require_client_cert=args.client_ca is not None)
    server = PeerServer(ModelStore(args.store), settings)
    server.start()
    print(server.url, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
