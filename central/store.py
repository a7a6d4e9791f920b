"""Central's store: registered devices and every event they sent, each held once.

Events are keyed by (device, seq), so a batch sent twice (after a reconnect,
a restart or a lost acknowledgement) adds nothing the second time. A device's
``acked_seq`` is the end of its contiguous run from seq 1: what central can
promise to hold, and so what it acknowledges.

    store = CentralStore(Path("central.db"))
    store.register("shop-0001", public_key, shop="Mengzi No. 3")
    added, acked = store.add_events("shop-0001", session=1, events=[{"seq": 1, "kind": "sale", "body": {...}}])
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from provisioning import protocol
from storage import sqlite

from .errors import ActivationRefused, RegistryError, SeqConflict


@dataclass(frozen=True)
class Device:
    device_id: str
    public_key: str
    acked_seq: int
    shop: str = ""
    region: str = ""
    revoked_at: float | None = None  # operations revoked it; its batches are still taken, to hand in what it holds


@dataclass(frozen=True)
class DeviceStatus:
    state: str  # online, offline
    session: int
    sent_at: float  # the device's clock
    received_at: float  # central's clock
    clock_offset: float | None  # seconds the device's clock is ahead of central's (behind: negative)
    health: dict[str, Any]  # backlog, acked_seq, scanners, agent_version, free_bytes, ... (when online)


@dataclass(frozen=True)
class Shop:
    licence: str  # the tobacco retail licence number: the shop's id
    name: str
    region: str
    monitoring: bool = False  # a monitoring point: reports actual retail prices and stock


@dataclass(frozen=True)
class UploadDay:
    """What central saw of one device's uploads on one day."""

    day: str  # YYYY-MM-DD, central's local calendar
    reports: int  # live statuses received: the box was up and talking
    sales: int  # sales scanned that day that central holds
    late: int  # of those, received more than the deadline after they were scanned

    @property
    def uploaded(self) -> bool:
        """The day counts as uploaded: the box reported that day and none of that day's sales came late."""
        return self.reports > 0 and self.late == 0


class CentralStore:
    def __init__(self, path: Path):
        sqlite.create_private(path)
        try:
            self.conn = sqlite.connect(path)
            sqlite.durable(self.conn)
            self.db = sqlite_utils.Database(self.conn)
            # EXCLUSIVE: central and a command starting at once agree on one schema.
            with sqlite.transaction(self.conn, mode="EXCLUSIVE"):
                self.db["devices"].create(
                    {"device_id": str, "public_key": str, "shop": str, "region": str, "registered_at": float,
                     "acked_seq": int, "revoked_at": float},
                    pk="device_id", not_null={"public_key", "acked_seq"}, defaults={"acked_seq": 0}, if_not_exists=True,
                )
                for column in ("region", "revoked_at"):  # a database from before them
                    if column not in self.db["devices"].columns_dict:
                        self.db["devices"].add_column(column, float if column == "revoked_at" else str)
                self.db["events"].create(
                    {"device_id": str, "seq": int, "kind": str, "session": int, "received_at": float, "body": str},
                    pk=("device_id", "seq"), foreign_keys=[("device_id", "devices")], if_not_exists=True,
                )
                # Each device's latest status (docs/protocol.md, Presence and health). clock_offset is
                # the device's clock minus central's, from the last status that came live.
                # Every document operations issued: the token as signed, and when it reached the broker.
                self.db["documents"].create(
                    {"name": str, "version": int, "kind": str, "scope": str, "kid": str, "issued_at": float,
                     "expires_at": float, "token": bytes, "published_at": float},
                    pk=("name", "version"), not_null={"kind", "scope", "token"}, if_not_exists=True,
                )
                # The company's retail clients, by licence number, and the activation codes issued for them.
                self.db["shops"].create(
                    {"licence": str, "name": str, "region": str, "monitoring": int, "registered_at": float},
                    pk="licence", not_null={"name", "region"}, if_not_exists=True,
                )
                self.db["activation_codes"].create(
                    {"code_id": str, "shop": str, "token": str, "device": str, "issued_at": float, "expires_at": float,
                     "used_by": str, "used_key": str, "used_at": float},
                    pk="code_id", foreign_keys=[("shop", "shops", "licence")], not_null={"shop", "token"},
                    if_not_exists=True,
                )
                # Boxes waiting for activation, from their hello.
                self.db["waiting"].create(
                    {"device_id": str, "public_key": str, "agent_version": str, "seen_at": float},
                    pk="device_id", if_not_exists=True,
                )
                # Days on which a device reported live (central's local calendar): half of "upload success".
                self.db["upload_days"].create({"device_id": str, "day": str, "reports": int},
                                              pk=("device_id", "day"), if_not_exists=True)
                self.db["device_status"].create(
                    {"device_id": str, "state": str, "session": int, "connection": int, "sent_at": float,
                     "received_at": float, "clock_offset": float, "body": str},
                    pk="device_id", foreign_keys=[("device_id", "devices")], if_not_exists=True,
                )
        except sqlite3.Error as error:
            raise RegistryError(f"central's database {path}: {error}") from error

    def close(self) -> None:
        self.conn.close()

    def register(self, device_id: str, public_key: str, *, shop: str = "", region: str = "",
                 replace: bool = False) -> None:
        """Register (or with ``replace``, re-key) a device: central's own operation, behind counterbox-ops."""
        with sqlite.transaction(self.conn):
            existing = self.device(device_id)
            if existing and existing.revoked_at is not None:
                # Its events and its revocation stay under this id: a box in service again is a new id.
                raise RegistryError(f"device {device_id} was revoked; register the box under a new id")
            if existing and existing.public_key != public_key and not replace:
                raise RegistryError(f"device {device_id} is registered with another public key; pass --replace to re-key it")
            self.db["devices"].upsert(
                {"device_id": device_id, "public_key": public_key, "shop": shop, "region": region,
                 "registered_at": time.time()},
                pk="device_id",
            )

    def revoke(self, device_id: str) -> None:
        with sqlite.transaction(self.conn) as conn:
            conn.execute("UPDATE devices SET revoked_at = coalesce(revoked_at, ?) WHERE device_id = ?", [time.time(), device_id])

    def device_ids(self) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT device_id FROM devices ORDER BY device_id")]

    def device(self, device_id: str) -> Device | None:
        row = self.conn.execute(
            "SELECT device_id, public_key, acked_seq, coalesce(shop, ''), coalesce(region, ''), revoked_at FROM devices "
            "WHERE device_id = ?", [device_id]
        ).fetchone()
        return Device(*row) if row else None

    def add_events(self, device_id: str, session: int, events: list[dict[str, Any]]) -> tuple[int, int]:
        """Store the events not yet held; return (how many were new, the device's acked_seq)."""
        now = time.time()
        with sqlite.transaction(self.conn) as conn:
            self._check_no_conflict(device_id, events)
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO events (device_id, seq, kind, session, received_at, body) VALUES (?, ?, ?, ?, ?, ?)",
                [(device_id, e["seq"], e["kind"], session, now, json.dumps(e["body"], ensure_ascii=False)) for e in events],
            )
            added = conn.total_changes - before
            acked = conn.execute("SELECT acked_seq FROM devices WHERE device_id = ?", [device_id]).fetchone()[0]
            # Advance over the contiguous run; a gap (a batch still to come) stops it.
            for (seq,) in conn.execute(
                "SELECT seq FROM events WHERE device_id = ? AND seq > ? ORDER BY seq", [device_id, acked]
            ):
                if seq != acked + 1:
                    break
                acked = seq
            conn.execute("UPDATE devices SET acked_seq = ? WHERE device_id = ?", [acked, device_id])
        return added, acked

    def _check_no_conflict(self, device_id: str, events: list[dict[str, Any]]) -> None:
        """A seq already held must hold the same event: anything else is a device whose journal restarted."""
        held = {
            seq: (kind, json.loads(body))
            for seq, kind, body in self.conn.execute(
                "SELECT seq, kind, body FROM events WHERE device_id = ? AND seq BETWEEN ? AND ?",
                [device_id, events[0]["seq"], events[-1]["seq"]],
            )
        }
        for event in events:
            if event["seq"] in held and held[event["seq"]] != (event["kind"], event["body"]):
                raise SeqConflict(
                    f"seq {event['seq']} differs from the event central already holds for {device_id}: "
                    "the device's journal was reset or replaced; the batch is kept on the device, unacknowledged"
                )

    # -- shops and activation ------------------------------------------------------

    def add_shop(self, shop: Shop, *, replace: bool = False) -> None:
        with sqlite.transaction(self.conn):
            if self.shop(shop.licence) is not None and not replace:
                raise RegistryError(f"shop {shop.licence} is already registered; pass --replace to change it")
            self.db["shops"].upsert({"licence": shop.licence, "name": shop.name, "region": shop.region,
                                     "monitoring": int(shop.monitoring), "registered_at": time.time()}, pk="licence")

    def shop(self, licence: str) -> Shop | None:
        row = self.conn.execute("SELECT licence, name, region, monitoring FROM shops WHERE licence = ?", [licence]).fetchone()
        return Shop(row[0], row[1], row[2], bool(row[3])) if row else None

    def add_code(self, code_id: str, *, shop: str, token: str, device: str | None, issued_at: float,
                 expires_at: float) -> None:
        with sqlite.transaction(self.conn) as conn:
            conn.execute("INSERT INTO activation_codes (code_id, shop, token, device, issued_at, expires_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", [code_id, shop, token, device, issued_at, expires_at])

    def activate(self, code_id: str, token: str, *, device_id: str, public_key: str, now: float) -> Shop:
        """Use the code for this device and key, once, and register the device for the code's shop.
        The same device asking again with the same key gets the same answer (its result was lost);
        anything else raises ActivationRefused with the reason, and changes nothing."""
        with sqlite.transaction(self.conn) as conn:
            row = conn.execute("SELECT shop, token, device, expires_at, used_by, used_key FROM activation_codes "
                               "WHERE code_id = ?", [code_id]).fetchone()
            if row is None or row[1] != token:
                raise ActivationRefused("central never issued this code")
            licence, _, bound, expires_at, used_by, used_key = row
            if used_by is not None and (used_by, used_key) != (device_id, public_key):
                raise ActivationRefused("the code was already used by another box")
            if used_by is None and now > expires_at:
                raise ActivationRefused("the code has expired")
            if bound is not None and bound != device_id:
                raise ActivationRefused(f"the code was issued for device {bound}")
            existing = self.device(device_id)
            if existing is not None and existing.public_key != public_key:
                raise ActivationRefused(f"device {device_id} is registered with another key")
            if existing is not None and existing.revoked_at is not None:
                raise ActivationRefused(f"device {device_id} was revoked; a revoked box is activated again only "
                                        "after it has erased itself, as a new box")
            if existing is not None and used_by is None:
                raise ActivationRefused(f"device {device_id} is already active for shop {existing.shop}")
            shop = self.shop(licence)
            conn.execute("UPDATE activation_codes SET used_by = ?, used_key = ?, used_at = coalesce(used_at, ?) "
                         "WHERE code_id = ?", [device_id, public_key, now, code_id])
            self.register(device_id, public_key, shop=shop.licence, region=shop.region, replace=True)
            conn.execute("DELETE FROM waiting WHERE device_id = ?", [device_id])
        return shop

    def waiting(self, device_id: str, public_key: str, agent_version: str, seen_at: float) -> None:
        """A box waiting for activation said hello."""
        with sqlite.transaction(self.conn):
            if self.device(device_id) is None:
                self.db["waiting"].upsert({"device_id": device_id, "public_key": public_key,
                                           "agent_version": agent_version, "seen_at": seen_at}, pk="device_id")

    def waiting_devices(self) -> list[dict[str, Any]]:
        return [dict(zip(("device", "public_key", "agent_version", "seen_at"), row)) for row in self.conn.execute(
            "SELECT device_id, public_key, agent_version, seen_at FROM waiting ORDER BY seen_at DESC")]

    # -- documents ---------------------------------------------------------------

    def issue_document(self, sign: Callable[[int], tuple[str, str, str, float, float, bytes]], name: str) -> tuple[int, bytes]:
        """Give ``name``'s stream its next version, have ``sign(version)`` make the document
        (kind, scope, kid, issued_at, expires_at, token) and keep it; return (version, token)."""
        with sqlite.transaction(self.conn) as conn:
            version = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM documents WHERE name = ?", [name]).fetchone()[0]
            kind, scope, kid, issued_at, expires_at, token = sign(version)
            conn.execute(
                "INSERT INTO documents (name, version, kind, scope, kid, issued_at, expires_at, token) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [name, version, kind, scope, kid, issued_at, expires_at, token])
        return version, token

    def document_published(self, name: str, version: int) -> None:
        with sqlite.transaction(self.conn) as conn:
            conn.execute("UPDATE documents SET published_at = ? WHERE name = ? AND version = ?", [time.time(), name, version])

    def documents_held(self, device_id: str) -> dict[str, int]:
        """The version of each document stream the device says it has applied (its ``document`` events)."""
        rows = self.conn.execute(
            "SELECT json_extract(body, '$.name'), max(json_extract(body, '$.version')) FROM events "
            "WHERE device_id = ? AND kind = 'document' GROUP BY 1", [device_id])
        return dict(rows.fetchall())

    # -- presence and health ---------------------------------------------------------

    def record_status(self, device_id: str, status: dict[str, Any], *, received_at: float, live: bool) -> bool:
        """Keep ``status`` as the device's latest, unless a later one is held (protocol.status_order;
        a retained status sent again on subscribing may be older); True when it is now the latest.
        Only a live status measures the device's clock."""
        with sqlite.transaction(self.conn) as conn:
            if live and status["state"] == "online":
                conn.execute("INSERT INTO upload_days (device_id, day, reports) VALUES (?, date(?, 'unixepoch', 'localtime'), 1) "
                             "ON CONFLICT (device_id, day) DO UPDATE SET reports = reports + 1", [device_id, received_at])
            held = conn.execute(
                "SELECT session, connection, state, sent_at, clock_offset FROM device_status WHERE device_id = ?",
                [device_id]).fetchone()
            if held and protocol.status_order(dict(zip(("session", "connection", "state", "sent_at"), held))) \
                    > protocol.status_order(status):
                return False
            offset = status["sent_at"] - received_at if live and status["state"] == "online" else (held[4] if held else None)
            body = {k: v for k, v in status.items() if k not in ("v", "device", "state", "session", "connection", "sent_at")}
            self.db["device_status"].upsert(
                {"device_id": device_id, "state": status["state"], "session": status["session"],
                 "connection": status["connection"], "sent_at": status["sent_at"], "received_at": received_at,
                 "clock_offset": offset,
                 "body": json.dumps(body, ensure_ascii=False)},
                pk="device_id",
            )
        return True

    def revocation_delivered(self, device_id: str) -> bool:
        """Whether central holds the device's revocation event and everything before it."""
        row = self.conn.execute(
            "SELECT min(e.seq), d.acked_seq FROM devices d LEFT JOIN events e ON e.device_id = d.device_id "
            "AND e.kind = 'revocation' WHERE d.device_id = ?", [device_id]).fetchone()
        return bool(row and row[0] is not None and row[0] <= row[1])

    def upload_days(self, device_id: str, first_day: str, last_day: str, *, deadline: float) -> list[UploadDay]:
        """Each day from ``first_day`` to ``last_day`` (YYYY-MM-DD, central's local calendar) on which the
        device was registered, with what central saw of its uploads that day."""
        device = self.conn.execute(
            "SELECT date(registered_at, 'unixepoch', 'localtime'), date(revoked_at, 'unixepoch', 'localtime') "
            "FROM devices WHERE device_id = ?", [device_id]).fetchone()
        if device is None:
            return []
        registered, revoked = device
        reported = dict(self.conn.execute(
            "SELECT day, reports FROM upload_days WHERE device_id = ? AND day BETWEEN ? AND ?",
            [device_id, first_day, last_day]).fetchall())
        sales = {day: (total, late) for day, total, late in self.conn.execute(
            "SELECT date(json_extract(body, '$.scanned_at'), 'localtime') AS day, count(*), "
            "sum((julianday(received_at, 'unixepoch') - julianday(json_extract(body, '$.scanned_at'))) * 86400 > ?) "
            "FROM events WHERE device_id = ? AND kind = 'sale' AND day BETWEEN ? AND ? GROUP BY day",
            [deadline, device_id, first_day, last_day])}
        days = []
        for (day,) in self.conn.execute(
                "WITH RECURSIVE d(day) AS (SELECT ? UNION ALL SELECT date(day, '+1 day') FROM d WHERE day < ?) "
                "SELECT day FROM d", [max(first_day, registered), last_day]):
            if revoked and day > revoked:
                break
            total, late = sales.get(day, (0, 0))
            days.append(UploadDay(day, reported.get(day, 0), total, late))
        return days

    def status(self, device_id: str) -> DeviceStatus | None:
        row = self.conn.execute(
            "SELECT state, session, sent_at, received_at, clock_offset, body FROM device_status WHERE device_id = ?",
            [device_id],
        ).fetchone()
        if row is None:
            return None
        state, session, sent_at, received_at, offset, body = row
        return DeviceStatus(state, session, sent_at, received_at, offset, json.loads(body))

    def events(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        sql = "SELECT device_id, seq, kind, session, body FROM events"
        params: list[Any] = []
        if kind:
            sql += " WHERE kind = ?"
            params.append(kind)
        for device_id, seq, kind_, session, body in self.conn.execute(sql + " ORDER BY device_id, seq", params):
            yield {"device": device_id, "seq": seq, "kind": kind_, "session": session, **json.loads(body)}
