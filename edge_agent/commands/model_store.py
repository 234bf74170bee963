"""`edge-agent model keygen|sign|import|list|activate|rollback|pull|push`: the model store by hand.

    edge-agent model keygen --private-key fleet.key --public-key fleet.pub
    edge-agent model sign --key fleet.key models/x.manifest.json --model models/x.onnx
    edge-agent model import --store /var/lib/edge-agent/models --trusted-key fleet.pub models/x.onnx
    edge-agent model pull --store DIR --trusted-key fleet.pub --peer https://10.0.0.7:8765 \
        --token-file peer.token <sha256>
    edge-agent model push --store DIR <sha256> --node cam-box-7 --node cam-box-8 --broker 10.0.0.2

`push` only asks nodes to move: it publishes the signed manifest on each node's
`cmd/model/pull`, and each node fetches, validates and swaps on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.manifest import Manifest, ManifestError, manifest_path_for
from edge_agent.modelstore.signing import (
    KeyFileError,
    SignatureError,
    SignedManifest,
    TrustedKeys,
    generate_keypair,
    load_private_key,
    sign_manifest,
)
from edge_agent.modelstore.store import ModelStore, StoreError, manifest_from_signed
from edge_agent.p2p.announce import build_pull_command, pull_topic
from edge_agent.p2p.fetch import FetchError, FetchSettings, PeerAuth, PeerFetcher, client_tls_context
from edge_agent.p2p.server import read_token_file

_SIZE = re.compile(r"(\d+)([KMG]?)(i?B?)?(/s)?", re.IGNORECASE)
_PUSH_TIMEOUT_S = 10.0



class CommandError(Exception):
    """A refusal to print as one line, exit status 1."""


def byte_rate(text: str) -> int:
    """`500000`, `512K`, `4M`, `1G` (binary multiples) -> bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size like 4M or 512K, got {text!r}")
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2).upper()]


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, required=True, help="the model store folder (under the state dir)")
    p.add_argument("--trusted-key", type=Path, action="append", default=[], metavar="PEM",
                   help="a fleet public key; repeat for several")
    p.add_argument("--no-signatures", action="store_true",
                   help="accept unsigned manifests (development stores only)")


def _open_store(args: argparse.Namespace, *, need_keys: bool) -> ModelStore:
    if args.trusted_key and args.no_signatures:
        raise CommandError("give --trusted-key or --no-signatures, not both")
    if need_keys and not args.trusted_key and not args.no_signatures:
        raise CommandError("give --trusted-key PEM (or --no-signatures for a development store)")
    keys = TrustedKeys.from_files(args.trusted_key) if args.trusted_key else None
    return ModelStore(args.store, keys)


def add_store_subcommands(model_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the store commands to the `model` group's subparsers."""
    p = model_sub.add_parser("keygen", help="create an Ed25519 signing key pair (PEM)")
    p.add_argument("--private-key", type=Path, required=True, help="written with mode 0600")
    p.add_argument("--public-key", type=Path, required=True, help="copy this one to every node")
    p.set_defaults(func=_guarded("keygen", _keygen))

    p = model_sub.add_parser("sign", help="sign a manifest; writes a signed envelope")
    p.add_argument("manifest", type=Path, help="a plain .manifest.json (or an envelope to re-sign)")
    p.add_argument("--key", type=Path, required=True, help="the private key (PEM)")
    p.add_argument("--model", type=Path, help="check the manifest against this ONNX file first")
    p.add_argument("--out", type=Path, help="default: X.manifest.json -> X.manifest.signed.json")
    p.set_defaults(func=_guarded("sign", _sign))

    p = model_sub.add_parser("import", help="copy a local ONNX file and its signed manifest into the store")
    _store_args(p)
    p.add_argument("model", type=Path)
    p.add_argument("--manifest", type=Path,
                   help="signed envelope (default: X.manifest.signed.json beside the model)")
    p.set_defaults(func=_guarded("import", _import))

    p = model_sub.add_parser("list", help="versions in the store, the active one marked")
    _store_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per version")
    p.set_defaults(func=_guarded("list", _list))

    p = model_sub.add_parser("activate", help="make a stored version the active one (at next start)")
    _store_args(p)
    p.add_argument("sha256", help="the full sha256 or a unique prefix")
    p.add_argument("--reason", default="activated by hand")
    p.set_defaults(func=_guarded("activate", _activate))

    p = model_sub.add_parser("rollback", help="make the previously active version active again")
    _store_args(p)
    p.add_argument("--reason", default="rolled back by hand")
    p.set_defaults(func=_guarded("rollback", _rollback))
    _add_network_commands(model_sub)


def _add_network_commands(model_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = model_sub.add_parser("pull", help="fetch a version from peers into the store")
    _store_args(p)
    p.add_argument("sha256")
    p.add_argument("--peer", action="append", required=True, metavar="URL", help="http(s)://host:port; repeat")
    p.add_argument("--token-file", type=Path, help="bearer token for the peers")
    p.add_argument("--ca", type=Path, help="CA that signed the peers' certificates")
    p.add_argument("--cert", type=Path, help="client certificate (mutual TLS)")
    p.add_argument("--key", type=Path, help="client certificate's key")
    p.add_argument("--rate-limit", type=byte_rate, help="bytes/s across all peers, e.g. 4M")
    p.add_argument("--workers", type=int, default=4, choices=range(1, 17), metavar="1..16")
    p.add_argument("--chunk", type=byte_rate, default=1 << 20, help="chunk size (default 1M)")
    p.set_defaults(func=_guarded("pull", _pull))

    p = model_sub.add_parser("push", help="tell nodes over MQTT to pull a version")
    p.add_argument("sha256", nargs="?", help="a version in --store (or give --manifest)")
    p.add_argument("--store", type=Path)
    p.add_argument("--manifest", type=Path, help="a signed envelope instead of a store entry")
    p.add_argument("--node", action="append", required=True, help="target node name; repeat")
    p.add_argument("--broker", default="127.0.0.1:1883", help="host[:port] (default 127.0.0.1:1883)")
    p.add_argument("--prefix", default="edge", help="topic prefix (default edge)")
    p.add_argument("--source", action="append", default=[], metavar="URL",
                   help="a peer URL that holds the version, as a hint; repeat")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path)
    p.add_argument("--tls-ca", type=Path, help="connect with TLS, verifying the broker against this CA")
    p.set_defaults(func=_guarded("push", _push))


def _guarded(name: str, command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the store's and the network's refusals into one line on stderr and exit status 1."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (CommandError, StoreError, FetchError, SignatureError, KeyFileError, ManifestError,
                FileExistsError, FileNotFoundError, ValueError) as exc:
            print(f"edge-agent model {name}: {exc}", file=sys.stderr)
            return 1
    return run


def _keygen(args: argparse.Namespace) -> int:
    kid = generate_keypair(args.private_key, args.public_key)
    print(f"key id {kid}: private {args.private_key} (0600), public {args.public_key}")
    return 0


def _read_manifest_doc(path: Path) -> dict[str, Any]:
    """A plain manifest, or the manifest inside an envelope."""
    doc = json.loads(path.read_bytes()[: (1 << 20) + 1])
    if isinstance(doc, dict) and "manifest" in doc and "signature" in doc:
        return SignedManifest.from_dict(doc).manifest
    if not isinstance(doc, dict):
        raise CommandError(f"{path}: not a JSON object")
    return doc


def _sign(args: argparse.Namespace) -> int:
    doc = _read_manifest_doc(args.manifest)
    manifest = manifest_from_signed(SignedManifest(doc))  # refuse to sign an invalid manifest
    if args.model is not None:
        manifest.verify_file(args.model)
    signed = sign_manifest(doc, load_private_key(args.key))
    out = args.out or args.manifest.with_name(args.manifest.name.removesuffix(".json") + ".signed.json")
    out.write_bytes(signed.to_json())
    print(f"signed {manifest.name}@{manifest.version} ({manifest.sha256[:12]}) with key {signed.key_id}: {out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    store = _open_store(args, need_keys=True)
    path = args.manifest or manifest_path_for(args.model).with_suffix(".signed.json")
    if args.manifest is None and not path.exists() and args.no_signatures:
        path = manifest_path_for(args.model)
    signed = SignedManifest.load(path) if _is_envelope(path) else SignedManifest(Manifest.load(path).to_dict())
    entry = store.import_model(args.model, signed)
    print(f"imported {entry.label}: {entry.blob}")
    return 0


def _is_envelope(path: Path) -> bool:
    try:
        doc = json.loads(path.read_bytes()[: (1 << 20) + 1])
    except ValueError as exc:
        raise CommandError(f"{path}: not JSON: {exc}") from exc
    return isinstance(doc, dict) and "manifest" in doc


def _list(args: argparse.Namespace) -> int:
    store = _open_store(args, need_keys=False)
    active = store.active()
    for entry in store.entries():
        m = entry.manifest
        if args.json:
            print(json.dumps({"sha256": m.sha256, "name": m.name, "version": m.version, "created": m.created,
                              "size_bytes": m.size_bytes, "parent": m.parent, "active": m.sha256 == active,
                              "key_id": entry.signed.key_id}))
        else:
            mark = "*" if m.sha256 == active else " "
            print(f"{mark} {m.sha256[:16]}  {m.name}@{m.version}  {m.size_bytes:>11,d} B  {m.created}  "
                  f"key {entry.signed.key_id or 'unsigned'}")
    return 0


def _activate(args: argparse.Namespace) -> int:
    store = _open_store(args, need_keys=False)
    entry = store.activate(store.resolve(args.sha256), args.reason)
    print(f"active: {entry.label}: {entry.blob}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    store = _open_store(args, need_keys=False)
    entry = store.rollback(args.reason)
    print(f"active: {entry.label}: {entry.blob}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    store = _open_store(args, need_keys=True)
    tls = client_tls_context(args.ca, args.cert, args.key) if (args.ca or args.cert) else None
    auth = PeerAuth(token=read_token_file(args.token_file) if args.token_file else None, tls=tls)
    settings = FetchSettings(chunk_bytes=args.chunk, workers=args.workers, rate_limit_bps=args.rate_limit)
    entry, report = PeerFetcher(store, auth, settings).pull(args.sha256, args.peer)
    print(json.dumps({"pulled": entry.label, "sha256": entry.sha256, "blob": str(entry.blob),
                      "resumed_bytes": report.resumed_bytes, "fetched_bytes": report.fetched_bytes,
                      "bytes_by_peer": report.bytes_by_peer, "failures": report.failures,
                      "elapsed_s": round(report.elapsed_s, 3), "rate_bps": round(report.rate_bps)}))
    return 0


def _push(args: argparse.Namespace) -> int:
    if (args.manifest is None) == (args.sha256 is None):
        raise CommandError("give a sha256 with --store, or --manifest, not both")
    if args.manifest is not None:
        signed = SignedManifest.load(args.manifest)
    else:
        if args.store is None:
            raise CommandError("a sha256 needs --store")
        store = ModelStore(args.store)
        signed = store.load_signed(store.resolve(args.sha256))
    if signed.signature is None:
        raise CommandError("refusing to push an unsigned manifest: nodes reject it")
    host, _, port = args.broker.rpartition(":") if ":" in args.broker else (args.broker, "", "1883")
    password = read_token_file(args.password_file).decode() if args.password_file else None
    payload = build_pull_command(signed, args.source, request_id=f"cli-{os.getpid()}")
    topics = [pull_topic(args.prefix, node) for node in args.node]
    _publish_once(host, int(port), topics, payload, username=args.username, password=password,
                  tls_ca=args.tls_ca)
    for topic in topics:
        print(f"pushed {signed.sha256[:12]} to {topic}")
    return 0


def _publish_once(host: str, port: int, topics: list[str], payload: bytes, *, username: str | None,
                  password: str | None, tls_ca: Path | None) -> None:
    """Connect, publish each at QoS 1 (not retained: a retained command would replay), wait, disconnect."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    connected, refused = threading.Event(), []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        connected.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-agent-push-{os.getpid()}",
                         protocol=mqtt.MQTTv311)
    client.on_connect = on_connect
    if username is not None:
        client.username_pw_set(username, password)
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca))
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise CommandError(f"cannot reach the broker {host}:{port}: {exc}") from exc
    client.loop_start()
    try:
        if not connected.wait(_PUSH_TIMEOUT_S) or refused:
            raise CommandError(f"broker {host}:{port} did not accept the connection: "
                               f"{refused[0] if refused else 'no answer'}")
        infos = [client.publish(topic, payload, qos=1) for topic in topics]
        for info, topic in zip(infos, topics, strict=True):
            info.wait_for_publish(_PUSH_TIMEOUT_S)
            if not info.is_published():
                raise CommandError(f"broker did not acknowledge {topic} within {_PUSH_TIMEOUT_S} s")
    finally:
        client.disconnect()
        client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m edge_agent.commands.model_store ...`, until the `model` group is joined into the CLI."""
    import logging

    parser = argparse.ArgumentParser(prog="edge-agent model")
    add_store_subcommands(parser.add_subparsers(dest="model_command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
