"""The payloads of the model topics, as pure functions: no client, no store, no clock.

`{prefix}/{node}/model` (QoS 1, retained) says what a node runs and what it can serve:

    {"schema": 1, "node": "cam-box-7", "peer_url": "https://10.0.0.7:8765",
     "active": {"name": "demo-parts", "version": "1.1.0", "sha256": "...", "since": "2026-...Z"},
     "held": ["<sha256>", ...],
     "history": [{"time": ..., "action": "activate"|"rollback", "sha256": ..., "name": ...,
                  "version": ..., "reason": ...}, ...]}     # the newest entries, oldest first

`{prefix}/{node}/cmd/model/pull` (QoS 1, in) tells a node to move to a version:

    {"schema": 1, "signed_manifest": {<envelope, see modelstore.signing>},
     "sources": ["https://..."], "request_id": "..."}

Only the manifest inside is signed; `sources` are hints, since whatever they serve is held to
the signed sha256. Parsers bound the payload size, check every sha256 and URL, and ignore
unknown fields so that newer nodes can add some.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.modelstore.signing import MAX_MANIFEST_BYTES, SignatureError, SignedManifest
from edge_agent.p2p.fetch import parse_peer_url

ANNOUNCE_SCHEMA = 1
MAX_ANNOUNCEMENT_BYTES = 256 << 10
MAX_HELD = 1000
MAX_HISTORY = 20
MAX_SOURCES = 16

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class AnnounceError(ValueError):
    """A model-topic payload that is not valid JSON of the expected shape."""


def _check_url(url: str | None) -> str | None:
    if url is not None:
        parse_peer_url(url)  # raises ValueError, which pydantic reports
    return url


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ActiveModel(_Payload):
    name: str = Field(max_length=128)
    version: str = Field(max_length=64)
    sha256: Sha256
    since: str = Field(max_length=64)


class HistoryItem(_Payload):
    time: str = Field(max_length=64)
    action: Literal["activate", "rollback"]
    sha256: Sha256
    name: str = Field(max_length=128)
    version: str = Field(max_length=64)
    reason: str = Field(max_length=1024)


class Announcement(_Payload):
    schema_: Literal[1] = Field(default=1, alias="schema")
    node: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    peer_url: str | None = Field(default=None, max_length=2048)
    active: ActiveModel | None = None
    held: tuple[Sha256, ...] = Field(default=(), max_length=MAX_HELD)
    history: tuple[HistoryItem, ...] = Field(default=(), max_length=MAX_HISTORY)

    @field_validator("peer_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return _check_url(url)


class PullCommand(_Payload):
    schema_: Literal[1] = Field(default=1, alias="schema")
    signed_manifest: dict[str, Any]
    sources: tuple[str, ...] = Field(default=(), max_length=MAX_SOURCES)
    request_id: str | None = Field(default=None, max_length=128)

    @field_validator("sources")
    @classmethod
    def _urls(cls, sources: tuple[str, ...]) -> tuple[str, ...]:
        for url in sources:
            _check_url(url)
        return sources

    @property
    def signed(self) -> SignedManifest:
        return SignedManifest.from_dict(self.signed_manifest)


def model_topic(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/model"


def pull_topic(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/cmd/model/pull"


def build_announcement(node: str, peer_url: str | None, active: dict[str, Any] | None,
                       held: Iterable[str], history: Sequence[dict[str, Any]] = ()) -> bytes:
    """The retained payload; `active` is {name, version, sha256, since}, `history` store entries."""
    announcement = Announcement(node=node, peer_url=peer_url,
                                active=ActiveModel(**active) if active else None,
                                held=tuple(held)[:MAX_HELD],
                                history=tuple(HistoryItem(**h) for h in history[-MAX_HISTORY:]))
    return announcement.model_dump_json(by_alias=True).encode()


def _bounded(payload: bytes, limit: int) -> bytes:
    if len(payload) > limit:
        raise AnnounceError(f"payload of {len(payload)} bytes, limit {limit}")
    return payload


def parse_announcement(payload: bytes) -> Announcement:
    try:
        return Announcement.model_validate_json(_bounded(payload, MAX_ANNOUNCEMENT_BYTES))
    except ValidationError as exc:
        raise AnnounceError(f"invalid model announcement: {exc}") from exc


def holders(announcements: Iterable[Announcement], sha256: str, *, exclude_node: str | None = None) -> list[str]:
    """Peer URLs of the nodes that announce holding `sha256`, in the order given, without duplicates."""
    urls: list[str] = []
    for a in announcements:
        if a.node != exclude_node and a.peer_url and sha256 in a.held and a.peer_url not in urls:
            urls.append(a.peer_url)
    return urls


def peer_order(configured: Sequence[str], announced: Sequence[str], source: Sequence[str] = ()) -> list[str]:
    """The order a pull asks peers in: configured peers, then announced holders, then explicit sources."""
    order: list[str] = []
    for url in (*configured, *announced, *source):
        if url not in order:
            order.append(url)
    return order


def build_pull_command(signed: SignedManifest, sources: Sequence[str] = (),
                       request_id: str | None = None) -> bytes:
    command = PullCommand(signed_manifest=signed.to_dict(), sources=tuple(sources), request_id=request_id)
    return command.model_dump_json(by_alias=True).encode()


def parse_pull_command(payload: bytes) -> tuple[PullCommand, SignedManifest]:
    """The command and its envelope (shape checked; the signature is the store's to verify)."""
    try:
        command = PullCommand.model_validate_json(_bounded(payload, MAX_MANIFEST_BYTES + (64 << 10)))
        signed = command.signed
    except (ValidationError, SignatureError) as exc:
        raise AnnounceError(f"invalid model pull command: {exc}") from exc
    return command, signed
