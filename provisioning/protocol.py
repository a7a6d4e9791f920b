"""The wire contract between a device and central, written once (docs/protocol.md).

Topics, the signed envelope's types, batches and acknowledgements, and the one
size limit every part of the path checks:

    token = encode_batch(events, device="shop-0001", session=3, key=device_key)
    batch = decode_batch(token, device="shop-0001", key=registered_public_key)   # or ProtocolError
    token = encode_ack("shop-0001", 43, key=central_key)
    decode_ack(token, device="shop-0001", key=central_public_key)                # 43
    token = encode_status({"state": "online", "session": 3, ...}, device="shop-0001", key=device_key)
    decode_status(token, device="shop-0001", key=registered_public_key)          # {"state": "online", ...}

The agent and central both import this module; neither writes a topic or a
payload by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import jws
from .errors import ProtocolError, SignatureError

VERSION = 1
DEFAULT_PREFIX = "counterbox/v1"
BATCH_TYPE = "counterbox-batch+jws"
ACK_TYPE = "counterbox-ack+jws"
STATUS_TYPE = "counterbox-status+jws"
STATES = ("online", "offline")
CENTRAL_KID = "central"

# The one size limit of the path. The broker's max_packet_size (central/mosquitto.conf) is
# MAX_PACKET_BYTES; a signed message (batch or acknowledgement) is at most MAX_TOKEN_BYTES,
# leaving room for the topic and properties; and the journal refuses, when it is recorded, any
# event whose JSON exceeds MAX_EVENT_BYTES, which a batch of that event alone always fits in
# (base64 turns 3 bytes into 4; the rest of the envelope is under 2 KiB). So no event can be
# recorded that no batch could carry, and nothing waits behind one.
MAX_PACKET_BYTES = 8 * 1024 * 1024
MAX_TOKEN_BYTES = MAX_PACKET_BYTES - 64 * 1024
_ENVELOPE = 2048
MAX_EVENT_BYTES = (MAX_TOKEN_BYTES - _ENVELOPE) * 3 // 4 - _ENVELOPE
MAX_DEVICE_ID = 64  # characters
# How deep a message's JSON may nest (arrays and objects within one another). The protocol's own
# messages nest a few levels; a bound far above them keeps every reader and writer on the path (the
# journal, the stores, a batch's encoding, each with a stack of its own) well away from its limit.
MAX_NESTING = 32


TOPIC_PREFIX_RULE = ("MQTT topic levels of printable characters, without the wildcards + and #, empty levels, "
                     "or a leading $ (the broker's own topics)")


def is_topic_prefix(value: Any) -> bool:
    """A prefix every topic of the protocol can start with: a broker would refuse a publish under wildcards,
    and take a subscription under them as one to other topics."""
    return (isinstance(value, str) and 0 < len(value.encode()) <= 1024 and value.isprintable()
            and not value.startswith("$") and "+" not in value and "#" not in value
            and all(value.split("/")))


def topic_prefix(text: str) -> str:
    """``text`` as a topic prefix (a command line's type=): argparse.ArgumentTypeError when no topic can start with it."""
    import argparse  # its error, whose words argparse shows as they are (a ValueError's it drops)

    if not is_topic_prefix(text):
        raise argparse.ArgumentTypeError(f"topic prefix {text!r} must be {TOPIC_PREFIX_RULE}")
    return text


def batch_topic(prefix: str, device: str) -> str:
    return f"{prefix}/devices/{device}/batch"


def ack_topic(prefix: str, device: str) -> str:
    return f"{prefix}/devices/{device}/ack"


def status_topic(prefix: str, device: str) -> str:
    return f"{prefix}/devices/{device}/status"


def batch_subscription(prefix: str) -> str:
    """What central subscribes to for batches: every device's."""
    return f"{prefix}/devices/+/batch"


def status_subscription(prefix: str) -> str:
    """Every device's presence and health."""
    return f"{prefix}/devices/+/status"


def parse_device_topic(prefix: str, topic: str) -> tuple[str, str]:
    """(device, leaf) of a device's uplink topic (leaf ``batch`` or ``status``); ProtocolError for any other."""
    head, _, rest = topic.partition(f"{prefix}/devices/") if topic.startswith(f"{prefix}/devices/") else ("", "", "")
    device, _, leaf = rest.partition("/")
    if head or not valid_device_id(device) or leaf not in ("batch", "status"):
        raise ProtocolError(f"not a device's batch or status topic: {topic}")
    return device, leaf


def valid_device_id(device: str) -> bool:
    return 0 < len(device) <= MAX_DEVICE_ID and all(c.isascii() and (c.isalnum() or c in "-_.") for c in device)


def rfc3339(timestamp: float) -> str:
    """UTC with milliseconds, as every time on the wire is written: 2026-11-27T09:12:03.418Z."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WireEvent(Protocol):
    seq: int
    kind: str
    body: dict[str, Any]


# A journal's id: 32 lowercase hex digits (128 random bits), made with the journal, kept by its backups.
JOURNAL_ID = re.compile(r"[0-9a-f]{32}")
DIGEST = re.compile(r"[0-9a-f]{64}")  # an event digest (event_digest), as acknowledgements carry it


@dataclass(frozen=True)
class Batch:
    device: str
    session: int
    sent_at: str
    events: list[dict[str, Any]]  # {"seq", "kind", "body"}, seqs contiguous
    # The journal the events come from, and the last of its events delivered under another identity (a
    # journal restored onto another box) or 0: central's count for this device starts after it. A box
    # of an earlier version sends neither (None, 0).
    journal: str | None = None
    base_seq: int = 0

    @property
    def first_seq(self) -> int:
        return self.events[0]["seq"]

    @property
    def last_seq(self) -> int:
        return self.events[-1]["seq"]


def encode_batch(events: Sequence[WireEvent], *, device: str, session: int, key: Ed25519PrivateKey,
                 sent_at: float, journal: str | None = None, base_seq: int = 0) -> bytes:
    if not events:
        raise ValueError("a batch holds at least one event")
    payload: dict[str, Any] = {
        "v": VERSION,
        "device": device,
        "session": session,
        "first_seq": events[0].seq,
        "last_seq": events[-1].seq,
        "sent_at": rfc3339(sent_at),
    }
    if journal is not None:
        payload.update(journal=journal, base_seq=base_seq)
    payload["events"] = [{"seq": e.seq, "kind": e.kind, "body": e.body} for e in events]
    return jws.sign(payload_json(payload), key, kid=device, typ=BATCH_TYPE).encode()


def decode_batch(token: bytes, *, device: str, key: Ed25519PublicKey) -> Batch:
    """The batch in ``token``, published on ``device``'s topic and signed by its ``key``; else ProtocolError."""
    _, payload = verified(token, key, typ=BATCH_TYPE, kid=device)
    if not is_version(payload.get("v")) or payload.get("device") != device:
        raise ProtocolError(f"batch version {jws.shown(payload.get('v'))} / device {jws.shown(payload.get('device'))} "
                            f"does not match version {VERSION} and the topic's device {device!r}")
    events, first, last, session = (payload.get(k) for k in ("events", "first_seq", "last_seq", "session"))
    if not isinstance(events, list) or not events or not natural(first) or not natural(session, 0):
        raise ProtocolError("batch lacks events, a first_seq of 1 or more, or a session")
    seqs = [e.get("seq") if isinstance(e, dict) else None for e in events]
    # Integers each: true and 1.0 equal 1 in the comparisons.
    if seqs != list(range(first, first + len(events))) or last != seqs[-1] \
            or not all(type(seq) is int for seq in (*seqs, last)) or not natural(last):
        raise ProtocolError(f"batch seq {first}..{last} does not match its {len(events)} events")
    if not all(isinstance(e.get("kind"), str) and isinstance(e.get("body"), dict) for e in events):
        raise ProtocolError("an event lacks its kind or body")
    journal, base_seq = payload.get("journal"), payload.get("base_seq", 0)
    if journal is not None and not (isinstance(journal, str) and JOURNAL_ID.fullmatch(journal)):
        raise ProtocolError(f"batch journal {str(journal)[:40]!r} is not a journal id (32 lowercase hex digits)")
    if not natural(base_seq, 0, first - 1):
        raise ProtocolError(f"batch base_seq {str(base_seq)[:40]} is not a seq before its first, {first}")
    if "base_seq" in payload and journal is None:  # what was delivered before is of a journal: none, no base
        raise ProtocolError(f"batch base_seq {base_seq} names no journal it was delivered from")
    sent_at = payload.get("sent_at")
    try:
        parse_rfc3339(sent_at)
    except ValueError:
        sent_at = ""  # kept without it, not refused: central then times the batch's sales by the box's clock offset
    return Batch(device, session, sent_at, events, journal, base_seq)


@dataclass(frozen=True)
class Acknowledgement:
    """Central holds the device's events up to ``seq``; ``event``: the digest (``event_digest``) of the one it
    holds at ``seq``, when it says it (None: an acknowledgement of a central before it did, or of a seq
    whose event another device of the journal delivered)."""

    seq: int
    event: str | None = None


def event_digest(seq: int, kind: str, body: dict[str, Any]) -> str:
    """SHA-256 (hex) of an event as a batch carries it, ``{"seq", "kind", "body"}`` in canonical JSON (keys
    sorted, compact, UTF-8): central's acknowledgement names the event it holds at its seq by it, so that a
    box's journal restored from an older backup tells central's events from the ones it recorded since."""
    text = json.dumps({"seq": seq, "kind": kind, "body": body}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def encode_ack(device: str, ack_seq: int, *, key: Ed25519PrivateKey, journal: str | None = None,
               event: str | None = None) -> bytes:
    """Central holds ``device``'s events up to ``ack_seq``, of ``journal`` (the one its batches named); ``event``:
    the digest of the event it holds at ``ack_seq``."""
    payload: dict[str, Any] = {"v": VERSION, "device": device, "ack_seq": ack_seq}
    if journal is not None:
        payload["journal"] = journal
    if event is not None:
        payload["event"] = event
    return jws.sign(payload_json(payload), key, kid=CENTRAL_KID, typ=ACK_TYPE).encode()


def decode_ack(token: bytes, *, device: str, key: Ed25519PublicKey, journal: str | None = None) -> Acknowledgement:
    """What central acknowledges for ``device`` (and, given, for its ``journal``: an acknowledgement of
    another journal's events under this device's id, or of no journal named, moves nothing of this one);
    ProtocolError for anything else."""
    _, payload = verified(token, key, typ=ACK_TYPE, kid=CENTRAL_KID)
    if not is_version(payload.get("v")):
        raise ProtocolError(f"acknowledgement version {str(payload.get('v'))[:40]!r} is not {VERSION}"
                            if isinstance(payload.get("v"), str) else
                            f"acknowledgement version {jws.shown(payload.get('v'))} is not {VERSION}")
    if payload.get("device") != device:
        raise ProtocolError(f"acknowledgement is for device {jws.shown(payload.get('device'))}, not {device!r}")
    seq = payload.get("ack_seq")
    if not natural(seq, 0):
        raise ProtocolError(f"acknowledgement carries no valid ack_seq: {jws.shown(seq)}")
    held = payload.get("journal")
    if journal is not None and held is None:
        # From a central that does not name journals: it may be its retained acknowledgement of the journal
        # this box had before, and taken it would move this one's cursor over events central never held.
        raise ProtocolError(f"acknowledgement names no journal; this box takes only one naming its journal "
                            f"{journal!r}, so none of its events is acknowledged")
    if journal is not None and held != journal:
        raise ProtocolError(f"acknowledgement is for journal {str(held)[:40]!r}, not this box's {journal!r}: central "
                            "holds another journal's events under this device's id (this journal was made anew "
                            "or replaced); none of this journal's events is acknowledged")
    event = payload.get("event")
    if event is not None and not (isinstance(event, str) and DIGEST.fullmatch(event)):
        raise ProtocolError(f"acknowledgement's event {str(event)[:80]!r} is not a SHA-256 digest (64 lowercase hex "
                            "digits)")
    return Acknowledgement(seq, event)


def encode_status(status: dict[str, Any], *, device: str, key: Ed25519PrivateKey) -> bytes:
    """A device's presence and health, signed by the device: ``status`` holds ``state``, ``session``,
    ``connection`` and ``sent_at`` (a timestamp) and, when online, the health fields of docs/protocol.md."""
    payload = {"v": VERSION, "device": device, **status, "sent_at": rfc3339(status["sent_at"])}
    return jws.sign(payload_json(payload), key, kid=device, typ=STATUS_TYPE).encode()


def decode_status(token: bytes, *, device: str, key: Ed25519PublicKey) -> dict[str, Any]:
    """The status in ``token``, published on ``device``'s topic and signed by its ``key``; else ProtocolError."""
    _, payload = verified(token, key, typ=STATUS_TYPE, kid=device)
    if not is_version(payload.get("v")) or payload.get("device") != device:
        raise ProtocolError(f"status version {jws.shown(payload.get('v'))} / device {jws.shown(payload.get('device'))} "
                            f"does not match version {VERSION} and the topic's device {device!r}")
    if payload.get("state") not in STATES or not natural(payload.get("session"), 0) \
            or not natural(payload.get("connection")):
        raise ProtocolError(f"status lacks a state ({' or '.join(STATES)}), a session or a connection")
    try:
        payload["sent_at"] = parse_rfc3339(payload.get("sent_at"))
    except ValueError as error:
        raise ProtocolError(f"status sent_at: {error}") from None
    for name in HEALTH_COUNTS:
        if name in payload and not natural(payload[name], 0):
            raise ProtocolError(f"status {name} is not a count: {jws.shown(payload[name])}")
    if "erasing" in payload and (payload["erasing"] is not True or payload["state"] != "online"):
        raise ProtocolError(f"status erasing is said only as true, online: {jws.shown(payload['erasing'])}")
    if "agent_version" in payload and not is_agent_version(payload["agent_version"]):
        raise ProtocolError(f"status agent_version is not text of {AGENT_VERSION_RULE}")
    return payload


MAX_AGENT_VERSION = 64
AGENT_VERSION_RULE = f"at most {MAX_AGENT_VERSION} printable characters"


def is_agent_version(value: Any) -> bool:
    """A box's version as it says it: operations are shown it, so printable text, never a terminal's control."""
    return isinstance(value, str) and len(value) <= MAX_AGENT_VERSION and value.isprintable()


# The health fields of an online status that are counts (docs/protocol.md).
HEALTH_COUNTS = ("last_seq", "acked_seq", "backlog", "scanners", "free_bytes")


def status_order(status: dict[str, Any]) -> tuple:
    """Statuses sort by this: by the agent's start, its connection, and the will (offline) of a
    connection after every online status of it, which it outlives though signed before them."""
    return status["session"], status["connection"], status["state"] == "offline", status["sent_at"]


# A date and a time of day in UTC: not a date alone, nor a time with an offset (fromisoformat takes both).
_UTC_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")


def parse_rfc3339(text: Any) -> float:
    """A timestamp as the wire writes it (rfc3339), back to seconds since the epoch."""
    if not isinstance(text, str) or not _UTC_TIME.fullmatch(text):
        raise ValueError(f"{jws.shown(text)} is not an RFC 3339 UTC time")
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00").timestamp()
    except ValueError:
        raise ValueError(f"{jws.shown(text)} is not an RFC 3339 UTC time") from None
    try:
        # As a float, the year 9999's last microseconds round up into a year no time string has:
        # a time is taken only if the wire can write it back.
        rfc3339(moment)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{jws.shown(text)} is later than any time the protocol writes") from None
    return moment


# Integers on the wire stay within what every JSON reader holds exactly (I-JSON, RFC 7493).
MAX_INTEGER = 2**53 - 1


def natural(value: Any, least: int = 1, most: int = MAX_INTEGER) -> bool:
    """An integer (not a bool) from ``least`` to ``most``."""
    return isinstance(value, int) and not isinstance(value, bool) and least <= value <= most


def payload_json(payload: dict[str, Any]) -> bytes:
    """A message's payload as the protocol writes it: compact UTF-8 JSON, and RFC 8259's JSON only
    (ValueError for a NaN or infinite number, which no consumer's standard tools would read)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e400: Python's json would make it infinite
        raise ValueError(f"{text[:40]} is beyond a JSON number's range")
    return number


def media_type(typ: Any) -> Any:
    """A ``typ`` as the media type it names (RFC 7515, 4.1.9: one with no "/" has "application/" left out,
    and media types are told apart without regard to case): ``counterbox-batch+jws`` and
    ``application/counterbox-batch+jws`` are one type."""
    if not isinstance(typ, str):
        return typ
    typ = typ.lower()
    return typ if "/" in typ else f"application/{typ}"


def verified(token: bytes | str, key: Ed25519PublicKey, *, typ: str,
             kid: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a token that ``key`` signed, of type ``typ`` (and from ``kid``, when given),
    whose payload is a JSON object; ProtocolError (SignatureError) otherwise. Every message of the
    protocol is opened here: batches, acknowledgements, statuses, documents and activation."""
    if len(token) > MAX_TOKEN_BYTES:
        raise ProtocolError(f"message of {len(token)} bytes is over the protocol's limit of {MAX_TOKEN_BYTES}")
    try:
        text = token.decode("ascii") if isinstance(token, bytes) else token.encode("ascii").decode()
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise SignatureError("signature check failed: not a JWS compact token (non-ASCII bytes)") from None
    try:
        header, payload = jws.verify(text, key)
    except SignatureError as error:
        raise SignatureError(f"signature check failed: {error}") from None
    if media_type(header.get("typ")) != media_type(typ) or (kid is not None and header.get("kid") != kid):
        raise ProtocolError(f"header typ {jws.shown(header.get('typ'))} kid {jws.shown(header.get('kid'))} "
                            f"is not {typ!r}"
                            + (f" from {jws.shown(kid)}" if kid is not None else ""))
    try:
        # UTF-8 strictly (RFC 8259): no byte order mark, no UTF-16, no surrogate spelled in bytes.
        # A name twice in one object (I-JSON, RFC 7493, has none) is refused in what operations and central
        # sign: which value a reader takes would decide what it applies (a version 3 read as 99 put every
        # later version of the stream out of reach). A batch is the box's own signing, and its bodies by the
        # million: each object looked at in Python would cost central a tenth of its ingest.
        hook = None if typ == BATCH_TYPE else _unique_names
        decoded = json.loads(payload.decode("utf-8"), parse_constant=_not_json, parse_float=_finite,
                             object_pairs_hook=hook)
    except UnicodeDecodeError as error:
        raise ProtocolError(f"payload is not UTF-8 JSON: {error.reason} at byte {error.start}") from None
    except RecursionError:
        raise ProtocolError("payload is not JSON: nested too deeply") from None
    except ValueError as error:
        raise ProtocolError(f"payload is not JSON: {error}") from None
    if not isinstance(decoded, dict):
        raise ProtocolError(f"payload is a JSON {type(decoded).__name__}, not an object")
    if typ != BATCH_TYPE and not nested_within(decoded, MAX_NESTING):
        # A batch's bodies are the box's own journal's, which holds nothing deeper than it was given:
        # central stores them, or refuses one nested too deeply for its store (a RecursionError there).
        raise ProtocolError(f"payload nests deeper than {MAX_NESTING} levels")
    if b"\\u" in payload and not _text_stores(decoded):  # escapes are rare on the wire: the check is too
        raise ProtocolError("payload holds text no store keeps: a lone surrogate, or a NUL character")
    return header, decoded


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        twice = next(name for name in value if sum(key == name for key, _ in pairs) > 1)
        raise ValueError(f"an object names {jws.shown(twice)} twice")
    return value


def nested_within(value: dict[str, Any] | list[Any], most: int) -> bool:
    """Whether the object or array ``value`` and those within it nest ``most`` levels deep at most (itself
    the first), walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        members = item.values() if isinstance(item, dict) else item
        for member in members:
            if isinstance(member, (dict, list)):
                if depth >= most:
                    return False
                stack.append((member, depth + 1))
    return True


# A NUL (PostgreSQL's text and jsonb take none) or a lone surrogate (UTF-8 has none) in JSON text can
# only be spelled as an escape; no text on the wire holds one. The journal refuses both too.


def _text_stores(value: Any) -> bool:
    """Every string in ``value`` (keys too) is Unicode text (no lone surrogate, which JSON's escapes can
    spell) without NUL. Walked without recursion, however deep a batch's bodies nest."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or not _encodes(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_version(value: Any) -> bool:
    """The protocol's version number, as an integer (JSON's true or 1.0 are not it)."""
    return type(value) is int and value == VERSION
