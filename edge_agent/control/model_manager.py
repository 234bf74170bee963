"""Model versions on a running node: pull from peers, validate, swap between batches, roll back.

The one place that hands a model to the inference loop after start-up. Commands arrive over MQTT
(`cmd/model/pull` with a signed manifest, `cmd/model/rollback`) and run one at a time on this
manager's thread; each is answered on `<command>/result`. After a swap the new model is on
probation: if its error rate or inference time regresses beyond the configured limits, the
previous model (still loaded) is swapped back automatically.
"""

from __future__ import annotations

import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config.schema import EdgeConfig, PeersConfig, StoreConfig
from edge_agent.daemon import Daemon, detector_settings
from edge_agent.inference.loading import LoadedModel, open_model
from edge_agent.manifest import Manifest, manifest_path_for
from edge_agent.modelstore.signing import SignedManifest, TrustedKeys
from edge_agent.modelstore.store import ModelStore, StoredModel
from edge_agent.modelstore.validation import ValidationSettings, validate_candidate
from edge_agent.p2p.announce import (
    Announcement,
    build_announcement,
    holders,
    model_topic,
    parse_announcement,
    parse_pull_command,
    peer_order,
)
from edge_agent.p2p.fetch import FetchSettings, PeerAuth, PeerFetcher
from edge_agent.p2p.server import PeerServer, ServerSettings, read_token_file
from edge_agent.pipeline.workers import inference_plan
from edge_agent.publish.mqtt_link import MqttLink, encode

log = logging.getLogger(__name__)

PULL, ROLLBACK = "model/pull", "model/rollback"
RunnerWrapper = Callable[[LoadedModel], LoadedModel]


@dataclass
class _Probation:
    sha256: str
    previous: str
    started_ns: int
    baseline_ms: float


class ModelManager:
    def __init__(self, daemon: Daemon, store_cfg: StoreConfig, peers_cfg: PeersConfig | None,
                 *, wrap_candidate: RunnerWrapper | None = None) -> None:
        self.daemon = daemon
        self.cfg = store_cfg
        self.peers_cfg = peers_cfg
        root = store_cfg.state_dir / "models"
        self.trusted = TrustedKeys.from_files(store_cfg.trusted_keys)
        self.store = ModelStore(root, self.trusted)  # everything from the network goes through this
        self._local = ModelStore(root, None)  # the operator's own bootstrap model, and reads
        self._wrap = wrap_candidate or (lambda m: m)
        self.loaded: dict[str, LoadedModel] = {}
        self.announcements: dict[str, Announcement] = {}
        self.server: PeerServer | None = None
        token = read_token_file(peers_cfg.token_file) if peers_cfg else None
        self.fetcher = PeerFetcher(self.store, PeerAuth(token=token),
                                   FetchSettings(rate_limit_bps=peers_cfg.rate_limit_bps if peers_cfg else None))
        self._token = token
        self._requests: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-manager", daemon=True)
        self.probation: _Probation | None = None
        self.calibration_dir = store_cfg.calibration_dir

    # --- start-up -------------------------------------------------------------------------
    def bootstrap(self, config: EdgeConfig) -> StoredModel:
        """The store's active version; on a fresh node, the configured model imported and activated."""
        path = Path(config.model.path)
        manifest = Manifest.load(manifest_path_for(path))
        if self.calibration_dir is None:  # calibration images stay local: the configured model's folder
            self.calibration_dir = path.parent / str(manifest.calibration.get("dir", ""))
        active = self._local.active()
        if active is not None:
            return self._local.get(active)
        stored = self._local.import_model(path, SignedManifest(manifest.to_dict()))
        self._local.activate(stored.manifest.sha256, "bootstrap from the configured model file")
        return stored

    def model_opener(self, _path: Path, **kwargs: Any) -> LoadedModel:
        """For `Daemon(model_opener=...)`: open the store's active version, not the config's path."""
        stored = self._local.get(self._local.active() or "")
        model = open_model(stored.blob, manifest=stored.manifest, **kwargs)
        self.loaded[stored.manifest.sha256] = model
        return model

    def attach(self, link: MqttLink) -> None:
        link.on_command(link.topics.command(PULL), lambda p: self._enqueue(PULL, p))
        link.on_command(link.topics.command(ROLLBACK), lambda p: self._enqueue(ROLLBACK, p))
        prefix = link.topics.base.rsplit("/", 1)[0]
        link.on_command(model_topic(prefix, "+"), self._on_announcement)

    def start(self) -> None:
        if self.peers_cfg is not None:
            settings = ServerSettings(host=self.peers_cfg.listen_host, port=self.peers_cfg.listen_port,
                                      token=self._token)
            self.server = PeerServer(self._local, settings)
            self.server.start()
        self._thread.start()
        self.announce()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        if self.server is not None:
            self.server.stop()

    # --- MQTT -------------------------------------------------------------------------------
    def _enqueue(self, command: str, payload: bytes) -> None:
        try:
            self._requests.put_nowait((command, payload))
        except queue.Full:
            self._result(command, {"status": "rejected", "reason": "busy: too many model commands queued"})

    def _on_announcement(self, payload: bytes) -> None:
        if not payload:
            return
        try:
            ann = parse_announcement(payload)
        except ValueError:
            log.warning("ignoring a malformed model announcement")
            return
        self.announcements[ann.node] = ann

    def peer_url(self) -> str | None:
        if self.peers_cfg is None:
            return None
        if self.peers_cfg.advertise_url:
            return self.peers_cfg.advertise_url
        port = self.server.port if self.server else self.peers_cfg.listen_port
        return f"http://{self.peers_cfg.listen_host}:{port}"

    def announce(self) -> None:
        link = self.daemon.link
        entry = self._local.active_entry()
        if link is None or entry is None:
            return
        active = {"name": entry.name, "version": entry.version, "sha256": entry.sha256, "since": entry.time}
        payload = build_announcement(link.topics.node, self.peer_url(), active, self._local.held(),
                                     [h.to_dict() for h in self._local.history()[-20:]])
        link.publish(model_topic(link.topics.base.rsplit("/", 1)[0], link.topics.node), payload, qos=1,
                     retain=True)

    def _result(self, command: str, doc: dict[str, Any]) -> None:
        doc = {"schema": 1, "command": command, "at": round(time.time(), 3), **doc}
        level = logging.INFO if doc.get("status") in ("applied", "rolled back") else logging.ERROR
        log.log(level, "model %s: %s", command, doc.get("reason") or doc.get("status"),
                extra={"event": "model_command", "result": doc})
        link = self.daemon.link
        if link is not None:
            link.publish(link.topics.command_result(command), encode(doc), qos=1)

    # --- the manager's thread ---------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                command, payload = self._requests.get(timeout=0.25)
            except queue.Empty:
                self._check_probation()
                continue
            try:
                if command == PULL:
                    self._pull(payload)
                else:
                    self.rollback("rollback command")
            except Exception as exc:  # a failed command leaves the active model serving
                log.exception("model command %s failed", command)
                self._result(command, {"status": "rejected", "reason": str(exc)})

    def _pull(self, payload: bytes) -> None:
        started = time.monotonic()
        command, signed = parse_pull_command(payload)
        self.store.check_signed(signed)  # refuse unsigned or unknown-key manifests before any I/O
        sha = signed.sha256
        node = self.daemon.config.node.name
        configured = self.peers_cfg.peers if self.peers_cfg else ()
        peers = peer_order(configured, holders(self.announcements.values(), sha, exclude_node=node),
                           command.sources)
        stored, fetch = self.fetcher.pull(sha, peers, signed=signed, stop=self._stop)
        active_sha = self._local.active()
        report = validate_candidate(
            stored, trusted_keys=self.trusted, calibration_dir=self.calibration_dir or Path(),
            active=self._local.get(active_sha) if active_sha else None,
            settings=ValidationSettings(backend=self.daemon.config.model.backend,
                                        runner_options=inference_plan(self.daemon.config.model).runner_options,
                                        detector=detector_settings(self.daemon.config),
                                        latency_factor=self.cfg.latency_factor),
            keep_loaded=True)
        base = {"sha256": sha, "version": stored.manifest.version, "validation": report.to_dict(),
                "fetch": {"bytes_by_peer": fetch.bytes_by_peer, "resumed_bytes": fetch.resumed_bytes}}
        if not report.ok or report.model is None:
            self._result(PULL, {**base, "status": "rejected", "reason": report.reason})
            return
        self._swap_to(self._wrap(report.model), reason=f"pulled {stored.manifest.version}")
        self._result(PULL, {**base, "status": "applied", "elapsed_s": round(time.monotonic() - started, 3)})

    def _swap_to(self, model: LoadedModel, reason: str) -> None:
        previous = self.daemon.swap_model(model)
        sha = model.manifest.sha256
        self.loaded[sha] = model
        # Keep the current and the previous model in memory (instant rollback); release the rest.
        keep = {sha, previous.manifest.sha256}
        for other in [s for s in self.loaded if s not in keep]:
            del self.loaded[other]
        self._local.activate(sha, reason)
        self.announce()
        window = self.cfg.probation.window_s
        if window > 0 and previous.manifest.sha256 != sha:
            self.probation = _Probation(sha, previous.manifest.sha256, time.monotonic_ns(),
                                        self._median_ms(previous.manifest.sha256))

    def rollback(self, reason: str) -> None:
        started = time.monotonic()
        self.probation = None
        entry = self._local.rollback(reason)
        sha = entry.manifest.sha256
        model = self.loaded.get(sha)
        if model is None:
            model = open_model(entry.blob, manifest=entry.manifest, settings=detector_settings(self.daemon.config),
                               runner_options=inference_plan(self.daemon.config.model).runner_options)
        self.daemon.swap_model(model)
        self.loaded[sha] = model
        self.announce()
        self._result(ROLLBACK, {"status": "rolled back", "reason": reason, "sha256": sha,
                                "version": entry.manifest.version,
                                "elapsed_ms": round((time.monotonic() - started) * 1000, 1)})

    # --- probation --------------------------------------------------------------------------
    def _median_ms(self, sha: str) -> float:
        loop = self.daemon.loop
        times = [ms for s, ms, ok in list(loop.recent) if s == sha and ok] if loop else []
        return statistics.median(times) if times else 0.0

    def _check_probation(self) -> None:
        p, loop = self.probation, self.daemon.loop
        if p is None or loop is None:
            return
        limits = self.cfg.probation
        batches = [(ms, ok) for s, ms, ok in list(loop.recent) if s == p.sha256]
        if len(batches) >= limits.min_batches:
            errors = sum(1 for _, ok in batches if not ok) / len(batches)
            times = [ms for ms, ok in batches if ok]
            median = statistics.median(times) if times else float("inf")
            if errors > limits.max_error_rate:
                self.rollback(f"probation: error rate {errors:.1%} > {limits.max_error_rate:.1%}")
                return
            if p.baseline_ms and median > limits.max_latency_factor * p.baseline_ms:
                self.rollback(f"probation: inference {median:.2f} ms/image > {limits.max_latency_factor:g} x "
                              f"{p.baseline_ms:.2f} ms before the swap")
                return
        if (time.monotonic_ns() - p.started_ns) / 1e9 >= limits.window_s:
            log.info("model %s passed probation", p.sha256[:12], extra={"event": "probation_passed"})
            self.probation = None
