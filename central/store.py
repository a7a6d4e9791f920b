"""Central's store: registered devices and every event they sent, each held once.

Events are keyed by (device, seq), so a batch sent twice (after a reconnect,
a restart or a lost acknowledgement) adds nothing the second time. A device's
``acked_seq`` is the end of its contiguous run from seq 1: what central can
promise to hold, and so what it acknowledges.

    store = CentralStore(Path("central.db"))                                  # SQLite, the default
    store = CentralStore("postgresql+psycopg://central@/central?host=/run/postgresql")  # a fleet's
    store.register("shop-0001", public_key, shop="Mengzi No. 3")
    added, acked = store.add_events("shop-0001", session=1, events=[{"seq": 1, "kind": "sale", "body": {...}}])

One code path serves both databases: the tables are declared once below (SQLAlchemy Core), every
query is written once, and where the dialects differ (upserts, dates, JSON) the store uses
SQLAlchemy's constructs for both or computes in Python. One exception, the ingest's hot path: a
batch's events go to each driver in the statement it runs fastest (``_insert_events``). The schema is Alembic's revisions in
central/migrations, run when the store opens. Two central processes may share a database: SQLite's
writers take turns (BEGIN IMMEDIATE); on PostgreSQL a transaction that reads and then writes what
another could be changing first locks it (SELECT ... FOR UPDATE, or an advisory lock on a key).
"""

from __future__ import annotations

import dataclasses

import contextlib
import hashlib
import json
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect

from provisioning import jws, protocol
from provisioning.documents import meant_for
from storage import sqlite

from .errors import ActivationRefused, Busy, ForeignJournal, JournalReplaced, RegistryError, SeqConflict, UnheldBase

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"  # the schema as central kept it before migrations
HEAD = "0010"  # the newest revision in central/migrations/versions: a database at it needs no Alembic

metadata = sa.MetaData()

devices = sa.Table(
    "devices", metadata,
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("shop", sa.Text),
    sa.Column("region", sa.Text),
    sa.Column("registered_at", sa.Double),
    sa.Column("acked_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("revoked_at", sa.Double),  # operations revoked it; its batches are still taken
    sa.Column("journal", sa.Text, index=True),  # the id of the journal whose events are held (its first batch naming one)
    sa.Column("admitted_at", sa.Double),  # central made its client and role at the production broker
    sa.Column("erasing_at", sa.Double),  # central took the revoked box's signed word that it erases itself now
    sa.Column("erasing_seq", sa.BigInteger),  # the last seq it held as it said so
)
events = sa.Table(
    "events", metadata,
    sa.Column("device_id", sa.Text, sa.ForeignKey("devices.device_id"), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("kind", sa.Text),
    sa.Column("session", sa.BigInteger),
    sa.Column("received_at", sa.Double),
    sa.Column("body", sa.Text),  # JSON, as the device signed it (read in Python: both databases alike)
    sa.Column("sent_at", sa.Double),  # the sending time of the batch that brought it, by the box's clock
)
_events = events  # within add_events, whose argument is named events
# Each batch that brought central an event it did not hold, as its box signed it: what a consumer that
# missed it fetches and verifies (counterbox-central batches).
batches = sa.Table(
    "batches", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.Text, sa.ForeignKey("devices.device_id"), nullable=False),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("received_at", sa.Double),
    sa.Column("deflated", sa.LargeBinary, nullable=False),  # the token, zlib-compressed (its JSON, base64url in the token, repeats itself batch after batch)
)
sa.Index("ix_batches_device_last", batches.c.device_id, batches.c.last_seq)
# The boxes' document events (what each says it applied), apart from their sales: read when a version is issued.
sa.Index("ix_events_document", events.c.kind, sqlite_where=events.c.kind == "document",
         postgresql_where=events.c.kind == "document")
# Every document operations issued: the token as signed, and when it reached the broker.
documents = sa.Table(
    "documents", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("kid", sa.Text),
    sa.Column("issued_at", sa.Double),
    sa.Column("expires_at", sa.Double),
    sa.Column("token", sa.LargeBinary, nullable=False),
    sa.Column("published_at", sa.Double),
)
# The company's retail clients, by licence number, and the activation codes issued for them.
shops = sa.Table(
    "shops", metadata,
    sa.Column("licence", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("region", sa.Text, nullable=False),
    sa.Column("monitoring", sa.Integer),  # 0 or 1
    sa.Column("registered_at", sa.Double),
    sa.Column("left_at", sa.Double),  # the shop left (counterbox-ops shop leave); null while it trades
)
activation_codes = sa.Table(
    "activation_codes", metadata,
    sa.Column("code_id", sa.Text, primary_key=True),
    sa.Column("shop", sa.Text, sa.ForeignKey("shops.licence"), nullable=False),
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("device", sa.Text),
    sa.Column("issued_at", sa.Double),
    sa.Column("expires_at", sa.Double),
    sa.Column("used_by", sa.Text),
    sa.Column("used_key", sa.Text),
    sa.Column("used_at", sa.Double),
    sa.Column("withdrawn_at", sa.Double),
)
# Boxes waiting for activation, from their hello.
waiting = sa.Table(
    "waiting", metadata,
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("public_key", sa.Text),
    sa.Column("agent_version", sa.Text),
    sa.Column("seen_at", sa.Double),
)
# Days on which a device reported live (central's local calendar), and the longest a backlog it
# reported that day had waited unacknowledged: with its sales' lateness, "upload success".
upload_days = sa.Table(
    "upload_days", metadata,
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("day", sa.Text, primary_key=True),  # YYYY-MM-DD
    sa.Column("reports", sa.BigInteger),
    sa.Column("waited", sa.Double),  # seconds
)
# Each device's latest status (docs/protocol.md, Presence and health). clock_offset is the device's
# clock minus central's, from the last status that came live.
device_status = sa.Table(
    "device_status", metadata,
    sa.Column("device_id", sa.Text, sa.ForeignKey("devices.device_id"), primary_key=True),
    sa.Column("state", sa.Text),
    sa.Column("session", sa.BigInteger),
    sa.Column("connection", sa.BigInteger),
    sa.Column("sent_at", sa.Double),
    sa.Column("received_at", sa.Double),
    sa.Column("clock_offset", sa.Double),
    sa.Column("body", sa.Text),  # JSON: the status's health fields
    # The box's last_seq when central first saw it hold events not yet acknowledged, and when: cleared
    # by a status whose acked_seq reaches it (a backlog that drains as it should).
    sa.Column("backlog_seq", sa.BigInteger),
    sa.Column("backlog_since", sa.Double),
)

# A SQLite file from before migrations, as the last central without them left it; older ones lacked
# a few tables and the two columns below, which that central added when it opened them. Adopting such
# a file completes it the same way, then stamps it with the baseline revision.
_LEGACY_TABLES = """
CREATE TABLE IF NOT EXISTS "devices" ("device_id" TEXT PRIMARY KEY, "public_key" TEXT NOT NULL, "shop" TEXT,
    "region" TEXT, "registered_at" REAL, "acked_seq" INTEGER NOT NULL DEFAULT 0, "revoked_at" REAL);
CREATE TABLE IF NOT EXISTS "events" ("device_id" TEXT REFERENCES "devices"("device_id"), "seq" INTEGER,
    "kind" TEXT, "session" INTEGER, "received_at" REAL, "body" TEXT, PRIMARY KEY ("device_id", "seq"));
CREATE TABLE IF NOT EXISTS "documents" ("name" TEXT, "version" INTEGER, "kind" TEXT NOT NULL,
    "scope" TEXT NOT NULL, "kid" TEXT, "issued_at" REAL, "expires_at" REAL, "token" BLOB NOT NULL,
    "published_at" REAL, PRIMARY KEY ("name", "version"));
CREATE TABLE IF NOT EXISTS "shops" ("licence" TEXT PRIMARY KEY, "name" TEXT NOT NULL, "region" TEXT NOT NULL,
    "monitoring" INTEGER, "registered_at" REAL);
CREATE TABLE IF NOT EXISTS "activation_codes" ("code_id" TEXT PRIMARY KEY,
    "shop" TEXT NOT NULL REFERENCES "shops"("licence"), "token" TEXT NOT NULL, "device" TEXT, "issued_at" REAL,
    "expires_at" REAL, "used_by" TEXT, "used_key" TEXT, "used_at" REAL);
CREATE TABLE IF NOT EXISTS "waiting" ("device_id" TEXT PRIMARY KEY, "public_key" TEXT, "agent_version" TEXT,
    "seen_at" REAL);
CREATE TABLE IF NOT EXISTS "upload_days" ("device_id" TEXT, "day" TEXT, "reports" INTEGER,
    PRIMARY KEY ("device_id", "day"));
CREATE TABLE IF NOT EXISTS "device_status" ("device_id" TEXT PRIMARY KEY REFERENCES "devices"("device_id"),
    "state" TEXT, "session" INTEGER, "connection" INTEGER, "sent_at" REAL, "received_at" REAL,
    "clock_offset" REAL, "body" TEXT)
"""
_LEGACY_COLUMNS = {"region": "TEXT", "revoked_at": "REAL"}  # devices' columns a database from before them lacks


def database(value: str) -> Path | str:
    """The --db and --central-db options: a URL (it holds "://", e.g. postgresql+psycopg://...) or a
    SQLite file's path."""
    return value if "://" in value else Path(value)


@dataclass(frozen=True)
class Device:
    device_id: str
    public_key: str
    acked_seq: int
    shop: str = ""
    region: str = ""
    revoked_at: float | None = None  # operations revoked it; its batches are still taken, to hand in what it holds
    erasing_at: float | None = None  # revoked, it said (signed) that it erases itself now: collect it
    erasing_seq: int | None = None  # the last seq it held then: what central lacks up to it is lost


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
    left_at: float | None = None  # when it left (its boxes revoked); None while it trades


@dataclass(frozen=True)
class UploadDay:
    """What central saw of one device's uploads on one day."""

    day: str  # YYYY-MM-DD, central's local calendar
    reports: int  # live statuses received: the box was up and talking
    sales: int  # sales scanned that day that central holds
    late: int  # of those, received more than the deadline after they were scanned
    # Its statuses that day showed events central had not acknowledged for longer than the deadline
    # (batches central refused, or a link that took nothing): whatever they were, they did not upload.
    held_back: bool = False

    @property
    def uploaded(self) -> bool:
        """The day counts as uploaded: the box reported that day, none of that day's sales came late and
        nothing it held waited past the deadline."""
        return self.reports > 0 and self.late == 0 and not self.held_back


def _json_text(value: Any) -> str:
    """``value`` as compact JSON text, by orjson (the standard library's encoder took a quarter of the
    ingest's time), or by the standard library for what orjson cannot write: integers past 64 bits.
    (orjson would write NaN and Infinity as null; the protocol refuses them before they get here.)"""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def same_json(a: Any, b: Any) -> bool:
    """Whether two values read from JSON are the same JSON: ``true`` is not ``1``, nor ``4.0`` ``4`` (all equal
    in Python). A box that sends another event under a seq central holds is refused, whatever it differs by."""
    pairs = [(a, b)]  # by hand, not by recursion: a body nested past Python's stack, stored once, compares again
    while pairs:
        a, b = pairs.pop()
        if type(a) is not type(b):
            return False
        if type(a) is dict:
            if a.keys() != b.keys():
                return False
            pairs.extend((value, b[name]) for name, value in a.items())
        elif type(a) is list:
            if len(a) != len(b):
                return False
            pairs.extend(zip(a, b))
        elif a != b:
            return False
    return True


class CentralStore:
    def __init__(self, path: Path | str, *, create: bool = True):
        """Open (creating or upgrading its schema) central's database: a SQLite file's path, or a URL
        such as postgresql+psycopg://user@/dbname?host=/run/postgresql. With ``create=False`` a SQLite
        file that does not exist is an error, not a new empty database: a command that reads, or acts
        on what is registered, given a mistyped path says so rather than leave an empty file behind."""
        self._local = threading.local()  # each thread's transaction in progress, for nested calls
        if isinstance(path, str) and "://" in path:
            try:
                url = sa.engine.make_url(path)
            except (sa.exc.ArgumentError, ValueError):  # its message would quote the URL, password and all
                raise RegistryError("central's database: the URL cannot be read; give one like "
                                    "postgresql+psycopg://user@host/dbname, or a SQLite file's path") from None
            self._where = url.render_as_string(hide_password=True)
            try:
                if url.get_backend_name() == "sqlite":
                    self.engine = self._sqlite_engine(Path(url.database or ""), create=create, where=self._where)
                else:
                    self.engine = sa.create_engine(url, pool_pre_ping=True)
                    sa.event.listen(self.engine, "connect", _wait_for_locks)
            except (sa.exc.ArgumentError, ValueError) as error:  # no such dialect or driver
                raise RegistryError(f"central's database {self._where}: {error}") from None
        else:
            self._where = str(path)
            self.engine = self._sqlite_engine(Path(path), create=create, where=self._where)
        try:
            self._migrate()
        except sa.exc.SQLAlchemyError as error:
            self.engine.dispose()
            raise RegistryError(f"central's database {self._where}: {error}") from error

    @staticmethod
    def _sqlite_engine(path: Path, *, create: bool, where: str) -> sa.Engine:
        """SQLite as every counterbox database keeps it (storage/sqlite.py): a file private to its
        user, WAL with synchronous=FULL on every connection, the busy timeout; transactions begun by
        the store, writers with BEGIN IMMEDIATE so that two processes take turns rather than fail."""
        if not create and not path.is_file():
            raise RegistryError(f"central's database {where} does not exist: give the one central's ingest "
                                "uses (--db, --central-db)")
        sqlite.create_private(path)
        engine = sa.create_engine("sqlite+pysqlite://", creator=lambda: sqlite.connect(path), poolclass=sa.pool.QueuePool)

        @sa.event.listens_for(engine, "connect")
        def durable(dbapi_connection, record) -> None:
            sqlite.durable(dbapi_connection)

        @sa.event.listens_for(engine, "begin")
        def begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get("write") else "BEGIN")

        return engine

    def _migrate(self) -> None:
        """Bring the schema to the newest revision in central/migrations, in one transaction that
        another process opening the same database waits for (and then finds nothing to do).
        A database already at HEAD is seen with one query: Alembic (half a second to import and set
        up, on every command) is loaded only when there is something to do."""
        with self._transaction(write=False) as conn:
            if sa.inspect(conn).has_table("alembic_version") and conn.execute(
                    sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD:
                return
        import logging

        # Its progress is not an operator's business; set before its import, which logs its plugins' setup.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(config).get_current_head()
        if head != HEAD:
            raise RegistryError(f"central/store.py HEAD is {HEAD}, but the newest migration is {head}: "
                                "set HEAD when adding a migration")
        with self._transaction() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL lock_timeout = 0")  # another central migrating: wait it out
            self._lock(conn, "schema")
            if MigrationContext.configure(conn).get_current_revision() == head:
                return
            config.attributes["connection"] = conn
            tables = set(sa.inspect(conn).get_table_names())
            if "alembic_version" not in tables and "devices" in tables and conn.dialect.name == "sqlite":
                self._adopt(conn)
                command.stamp(config, BASELINE)
            command.upgrade(config, "head")

    @staticmethod
    def _adopt(conn: sa.Connection) -> None:
        """Complete a SQLite file from before migrations as the last central without them did."""
        for statement in _LEGACY_TABLES.split(";"):
            conn.exec_driver_sql(statement)
        held = {column["name"] for column in sa.inspect(conn).get_columns("devices")}
        for column, kind in _LEGACY_COLUMNS.items():
            if column not in held:
                conn.exec_driver_sql(f'ALTER TABLE devices ADD COLUMN "{column}" {kind}')

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sa.Connection]:
        """One transaction; a call made inside another (activate registers the device) joins it."""
        current = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        try:
            with self.engine.connect() as conn:
                conn.execution_options(write=write)
                with conn.begin():
                    self._local.conn = conn
                    try:
                        yield conn
                    finally:
                        self._local.conn = None
        except sa.exc.OperationalError as error:
            if not _lock_waited_out(error):
                raise
            raise Busy(f"central's database {self._where}: another transaction held what this one needed for "
                       f"over {sqlite.BUSY_TIMEOUT_MS / 1000:g} s; nothing of it was written") from error

    @staticmethod
    def _lock(conn: sa.Connection, *key: str) -> None:
        """Until this transaction ends, hold off another central's transaction that locks the same key.
        SQLite's writers run one at a time already; PostgreSQL takes a transaction's advisory lock."""
        if conn.dialect.name == "postgresql":
            digest = hashlib.blake2b("\0".join(key).encode(), digest_size=8).digest()
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(int.from_bytes(digest, "big", signed=True)))).all()

    @staticmethod
    def _insert(conn: sa.Connection, table: sa.Table):
        """INSERT with ON CONFLICT, which both dialects write alike."""
        return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite_dialect.insert)(table)

    @property
    def conn(self) -> _Statements:
        """Plain SQL with ``?`` parameters, each statement its own transaction: for tests and repairs."""
        return _Statements(self.engine)

    def register(self, device_id: str, public_key: str, *, shop: str = "", region: str = "",
                 replace: bool = False) -> None:
        """Register (or with ``replace``, re-key) a device: central's own operation, behind counterbox-ops."""
        if device_id == protocol.CENTRAL_KID:
            # A device's id is its key's id in the key set consumers verify with: two keys under one id.
            raise RegistryError(f"device id {device_id!r} is central's own key id: register the box under another")
        with self._transaction() as conn:
            if shop:
                # Before the device's, as activate and shop_left take them: a shop leaving while a box is
                # registered for it waits for one or the other, never lets both through.
                self._lock(conn, "shop", shop)
                known = self.shop(shop)
                if known is not None and known.left_at is not None:
                    raise RegistryError(f"shop {shop} has left: no box is registered for it (`counterbox-ops shop "
                                        "add --replace` registers it again)")
            self._lock(conn, "device", device_id)
            existing = self.device(device_id)
            if existing and existing.revoked_at is not None:
                # Its events and its revocation stay under this id: a box in service again is a new id.
                raise RegistryError(f"device {device_id} was revoked; register the box under a new id")
            if existing and existing.public_key != public_key and not replace:
                raise RegistryError(f"device {device_id} is registered with another public key; pass --replace to re-key it")
            insert = self._insert(conn, devices).values(device_id=device_id, public_key=public_key, shop=shop,
                                                        region=region, registered_at=time.time())
            # Registered again: the same device since its first registration (its upload record counts from
            # then), in the shop and region it was in unless they are given anew.
            conn.execute(insert.on_conflict_do_update(
                index_elements=[devices.c.device_id],
                set_={"public_key": insert.excluded.public_key,
                      **{name: sa.case((insert.excluded[name] == "", devices.c[name]), else_=insert.excluded[name])
                         for name in ("shop", "region")}}))

    def revoke(self, device_id: str) -> None:
        with self._transaction() as conn:
            conn.execute(devices.update().where(devices.c.device_id == device_id)
                         .values(revoked_at=sa.func.coalesce(devices.c.revoked_at, time.time())))

    def device_ids(self) -> list[str]:
        with self._transaction(write=False) as conn:
            return list(conn.execute(sa.select(devices.c.device_id).order_by(devices.c.device_id)).scalars())

    def device(self, device_id: str) -> Device | None:
        with self._transaction(write=False) as conn:
            row = conn.execute(sa.select(
                devices.c.device_id, devices.c.public_key, devices.c.acked_seq, sa.func.coalesce(devices.c.shop, ""),
                sa.func.coalesce(devices.c.region, ""), devices.c.revoked_at, devices.c.erasing_at,
                devices.c.erasing_seq,
            ).where(devices.c.device_id == device_id)).first()
        return Device(*row) if row else None

    def add_events(self, device_id: str, session: int, events: list[dict[str, Any]], *, journal: str | None = None,
                   base_seq: int = 0, sent_at: float | None = None, token: bytes | None = None) -> tuple[int, int]:
        """Store the events not yet held; return (how many were new, the device's acked_seq).

        ``journal`` (the id the batch names): the device's first batch naming one makes it the device's, and
        its count starts after ``base_seq`` (the events its journal delivered as another device before); a
        batch naming another journal is refused (JournalReplaced). A batch naming none (a box of an earlier
        version) is taken as of the device's journal. An event of the journal that another device holds
        already, the same (a backup restored onto a new box, taken before its last box delivered all it
        had), is held: never stored twice, and counted as held. ``sent_at``: the batch's sending time by the
        box's clock, if it says one, kept with the events it adds. ``token``: the batch as signed, kept when it
        adds an event (for consumers that missed it)."""
        now = time.time()
        with self._transaction() as conn:
            # The device's row, locked: another central adding its events waits for this one to end.
            row = conn.execute(sa.select(devices.c.acked_seq, devices.c.journal).where(devices.c.device_id == device_id)
                               .with_for_update()).first()
            if row is None:
                raise RegistryError(f"device {device_id} is not registered")
            acked, held_journal = row
            if journal is not None and held_journal is None:
                self._check_same_shop(conn, device_id, journal)
                conn.execute(devices.update().where(devices.c.device_id == device_id).values(journal=journal))
            elif journal is not None and journal != held_journal:
                raise JournalReplaced(
                    f"device {device_id} sends events of journal {journal}, but central holds those of journal "
                    f"{held_journal}: the box's journal was made anew or replaced under the same id, and its seqs "
                    "are not the ones central holds. Nothing is stored or acknowledged; the box keeps its events. "
                    "Restore the box's journal from its backup, or register the box under a new id "
                    "(docs/commands.md, Replacing a box's journal)")
            # Counted from where its journal was delivered before as another device (its identity moved, or
            # moved away and back again): as far as central holds it from one, never on the box's word alone.
            if base_seq > acked:
                self._check_base_held(conn, device_id, journal, base_seq)
                acked = base_seq
            held = self._check_no_conflict(conn, device_id, events)
            elsewhere = self._held_elsewhere(conn, device_id, journal, events) if journal is not None else set()
            # New: the seqs not held. Exact, since adding a device's events takes its row's lock first.
            new = {e["seq"]: e for e in events if e["seq"] not in held and e["seq"] not in elsewhere}
            if new:
                self._insert_events(conn, device_id, session, now, new, sent_at)
                if token is not None:
                    conn.execute(batches.insert().values(device_id=device_id, first_seq=min(e["seq"] for e in events),
                                                         last_seq=max(e["seq"] for e in events), received_at=now,
                                                         deflated=zlib.compress(token, 1)))
            added = len(new)
            # Advance over the contiguous run; a gap (a batch still to come) stops it. Fetched at
            # once: a row at a time costs PostgreSQL's driver more than the rows past a gap do.
            run = conn.execute(sa.select(_events.c.seq).where(_events.c.device_id == device_id, _events.c.seq > acked)
                               .order_by(_events.c.seq)).scalars().all()
            for seq in sorted({*run, *elsewhere}) if elsewhere else run:
                if seq <= acked:
                    continue
                if seq != acked + 1:
                    break
                acked = seq
            conn.execute(devices.update().where(devices.c.device_id == device_id).values(acked_seq=acked))
        return added, acked

    @staticmethod
    def _insert_events(conn: sa.Connection, device_id: str, session: int, now: float,
                       new: dict[int, dict[str, Any]], sent_at: float | None) -> None:
        """The hot path (every event of every batch): straight to the driver, without SQLAlchemy's
        per-row parameter processing."""
        bodies = [_json_text(e["body"]) for e in new.values()]
        if conn.dialect.name == "postgresql":
            # One statement, its columns as arrays: executemany pays a round of PostgreSQL's protocol
            # per row, and a statement of many VALUES is parsed anew (by psycopg and the server) each time.
            conn.exec_driver_sql(
                "INSERT INTO events (device_id, seq, kind, session, received_at, sent_at, body) "
                "SELECT %s, seq, kind, %s, %s, %s, body FROM unnest(%b::bigint[], %b::text[], %b::text[]) "
                "AS batch(seq, kind, body) ON CONFLICT DO NOTHING",
                (device_id, session, now, sent_at, list(new), [e["kind"] for e in new.values()], bodies))
            return
        conn.exec_driver_sql(
            "INSERT INTO events (device_id, seq, kind, session, received_at, sent_at, body) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [(device_id, seq, e["kind"], session, now, sent_at, body) for (seq, e), body in zip(new.items(), bodies)])

    @staticmethod
    def _check_same_shop(conn: sa.Connection, device_id: str, journal: str) -> None:
        """ForeignJournal if a device of a registered shop other than this device's holds ``journal`` (this one
        of no shop included): a backup is restored onto a box of its own shop. (A journal id is no secret: every
        batch and acknowledgement names it.) A box of no registered shop (a lab's, or one registered by a shop's
        name before shops had licences) has no shop to guard: its replacement is registered by the licence."""
        shop = sa.select(sa.func.coalesce(devices.c.shop, "")).where(devices.c.device_id == device_id)
        other = conn.execute(sa.select(devices.c.device_id, devices.c.shop).where(
            devices.c.journal == journal, devices.c.device_id != device_id,
            devices.c.shop.in_(sa.select(shops.c.licence)), devices.c.shop != shop.scalar_subquery()).limit(1)).first()
        if other is not None:
            raise ForeignJournal(
                f"device {device_id} sends events of journal {journal}, which central holds from device {other[0]} "
                f"of shop {other[1]}, another shop: nothing is stored or acknowledged. A box's journal is restored "
                "onto a box of its own shop")

    @staticmethod
    def _check_base_held(conn: sa.Connection, device_id: str, journal: str | None, base_seq: int) -> None:
        """UnheldBase unless another device holds the journal's events up to ``base_seq``: one of that journal,
        or one of the same shop that named no journal (a box of an earlier version, whose journal this is)."""
        shop = sa.select(sa.func.coalesce(devices.c.shop, "")).where(devices.c.device_id == device_id).scalar_subquery()
        reached = conn.execute(sa.select(sa.func.max(devices.c.acked_seq)).where(
            devices.c.device_id != device_id,
            sa.or_(devices.c.journal == journal,
                   sa.and_(devices.c.journal.is_(None), sa.func.coalesce(devices.c.shop, "") == shop)),
        )).scalar() if journal else None
        if reached is None or reached < base_seq:
            held = "none of that journal's" if not reached else f"them only up to seq {reached}"
            raise UnheldBase(
                f"device {device_id} counts the events of journal {journal} up to seq {base_seq} as delivered by "
                f"another device, but central holds {held} from another device. Nothing is stored or "
                "acknowledged; the box keeps its events")

    @staticmethod
    def _held_elsewhere(conn: sa.Connection, device_id: str, journal: str, events: list[dict[str, Any]]) -> set[int]:
        """The batch's seqs whose events another device of the same journal holds, the same: delivered already,
        by the box the journal was on before (acknowledged to it or not: past a gap its box never filled, it is
        the same event all the same, and was stored twice)."""
        held: set[int] = set()
        for (twin,) in conn.execute(sa.select(devices.c.device_id).where(
                devices.c.journal == journal, devices.c.device_id != device_id)):
            theirs = conn.execute(sa.select(_events.c.seq, _events.c.kind, _events.c.body).where(
                _events.c.device_id == twin, _events.c.seq.between(events[0]["seq"], events[-1]["seq"])))
            mine = {event["seq"]: (event["kind"], event["body"]) for event in events}
            held |= {seq for seq, kind, body in theirs if seq in mine and mine[seq][0] == kind
                     and same_json(mine[seq][1], json.loads(body))}
        return held

    @staticmethod
    def _check_no_conflict(conn: sa.Connection, device_id: str, events: list[dict[str, Any]]) -> set[int]:
        """A seq already held must hold the same event: anything else is a device whose journal restarted.
        The batch's seqs already held."""
        held = {
            seq: (kind, json.loads(body))
            for seq, kind, body in conn.execute(
                sa.select(_events.c.seq, _events.c.kind, _events.c.body).where(
                    _events.c.device_id == device_id, _events.c.seq.between(events[0]["seq"], events[-1]["seq"])))
        }
        for event in events:
            if event["seq"] not in held or (held[event["seq"]][0] == event["kind"]
                                             and same_json(held[event["seq"]][1], event["body"])):
                continue
            if event["kind"] == "damaged" and event["body"].get("kind") == held[event["seq"]][0]:
                continue  # sent whole before, damaged on the box since: central keeps what it holds
            raise SeqConflict(
                f"seq {event['seq']} differs from the event central already holds for {device_id}: "
                "the device's journal was reset or replaced; the batch is kept on the device, unacknowledged"
            )
        return set(held)

    # -- shops and activation ------------------------------------------------------

    def add_shop(self, shop: Shop, *, replace: bool = False) -> list[str]:
        """Register ``shop`` (with ``replace``, change it). Returns the boxes active for it that its change of
        region or monitoring does not reach: each holds those of its activation (its documents' region, its
        snapshots) until it is activated again."""
        with self._transaction() as conn:
            self._lock(conn, "shop", shop.licence)
            before = self.shop(shop.licence)
            if before is not None and not replace:
                raise RegistryError(f"shop {shop.licence} is already registered; pass --replace to change it")
            unreached = [] if before is None or (before.region, before.monitoring) == (shop.region, shop.monitoring) \
                else list(conn.execute(sa.select(devices.c.device_id).where(
                    devices.c.shop == shop.licence, devices.c.revoked_at.is_(None)).order_by(devices.c.device_id)).scalars())
            insert = self._insert(conn, shops).values(licence=shop.licence, name=shop.name, region=shop.region,
                                                      monitoring=int(shop.monitoring), registered_at=time.time(),
                                                      left_at=None)  # registered again: it trades again
            conn.execute(insert.on_conflict_do_update(
                index_elements=[shops.c.licence],
                set_={name: insert.excluded[name] for name in ("name", "region", "monitoring", "registered_at",
                                                               "left_at")}))
        return unreached

    def shop_left(self, licence: str, *, at: float) -> None:
        """The shop left: once none of its boxes is active (each revoked first, so that it hands in what it
        holds). RegistryError for a shop not registered or still served."""
        with self._transaction() as conn:
            self._lock(conn, "shop", licence)
            if self.shop(licence) is None:
                raise RegistryError(f"shop {licence} is not registered")
            serving = conn.execute(sa.select(devices.c.device_id).where(
                devices.c.shop == licence, devices.c.revoked_at.is_(None)).order_by(devices.c.device_id)).scalars().all()
            if serving:
                raise RegistryError(f"shop {licence} is still served by {', '.join(serving)}: revoke "
                                    f"{'it' if len(serving) == 1 else 'each'} first (counterbox-ops revoke), so that "
                                    "what it holds is handed in")
            conn.execute(shops.update().where(shops.c.licence == licence)
                         .values(left_at=sa.func.coalesce(shops.c.left_at, at)))

    def shop(self, licence: str) -> Shop | None:
        with self._transaction(write=False) as conn:
            row = conn.execute(sa.select(shops.c.licence, shops.c.name, shops.c.region, shops.c.monitoring,
                                         shops.c.left_at).where(shops.c.licence == licence)).first()
        return Shop(row[0], row[1], row[2], bool(row[3]), row[4]) if row else None

    def shops(self, region: str | None = None) -> list[tuple[Shop, list[str]]]:
        """Every shop registered (``region``'s alone, given one), by licence, each with the devices that serve it
        now (registered for it and not revoked)."""
        with self._transaction(write=False) as conn:
            query = sa.select(shops.c.licence, shops.c.name, shops.c.region, shops.c.monitoring,
                              shops.c.left_at).order_by(shops.c.licence)
            rows = conn.execute(query if region is None else query.where(shops.c.region == region)).all()
            serving: dict[str, list[str]] = {}
            for device_id, shop in conn.execute(sa.select(devices.c.device_id, devices.c.shop).where(
                    devices.c.revoked_at.is_(None)).order_by(devices.c.device_id)):
                serving.setdefault(shop, []).append(device_id)
        return [(Shop(licence, name, shop_region, bool(monitoring), left_at), serving.get(licence, []))
                for licence, name, shop_region, monitoring, left_at in rows]

    def regions(self) -> set[str]:
        """The regions central knows: of a shop or a box registered, or a document pushed to (one made ahead
        of its shops)."""
        with self._transaction(write=False) as conn:
            named = conn.execute(sa.union(sa.select(shops.c.region), sa.select(devices.c.region))).scalars().all()
            scopes = conn.execute(sa.select(documents.c.scope).distinct()).scalars().all()
        pushed = (json.loads(scope).get("region") for scope in scopes)
        return {region for region in (*named, *pushed) if isinstance(region, str) and region}

    def add_code(self, code_id: str, *, shop: str, token: str, device: str | None, issued_at: float,
                 expires_at: float) -> None:
        with self._transaction() as conn:
            conn.execute(activation_codes.insert().values(code_id=code_id, shop=shop, token=token, device=device,
                                                          issued_at=issued_at, expires_at=expires_at))

    def activation_held(self, device_id: str, public_key: str, *, admitted: bool) -> tuple[str, Shop] | None:
        """(the code it was activated with, its shop as registered) of a device central holds active under
        ``public_key`` by a code and has never heard from as active (no batch, no status): its acceptance
        never reached it. None for any other (unknown, another key, revoked, registered by hand, or heard
        from: a box that waits then has lost its journal, and is for operations to look at). With
        ``admitted`` (central keeps the production broker), only one central admitted there: the acceptance
        of one whose admission failed would leave it active and shut out (its request admits it, again)."""
        codes = activation_codes
        with self._transaction(write=False) as conn:
            row = conn.execute(
                sa.select(codes.c.code_id, shops.c.licence, shops.c.name, devices.c.region, shops.c.monitoring)
                .select_from(devices.join(codes, codes.c.used_by == devices.c.device_id)
                             .join(shops, shops.c.licence == devices.c.shop))
                .where(devices.c.device_id == device_id, devices.c.public_key == public_key,
                       devices.c.revoked_at.is_(None), devices.c.journal.is_(None), devices.c.acked_seq == 0,
                       devices.c.admitted_at.is_not(None) if admitted else sa.true(),
                       ~sa.exists().where(device_status.c.device_id == device_id),
                       codes.c.used_key == public_key, codes.c.shop == devices.c.shop)
                .order_by(codes.c.used_at.desc()).limit(1)).first()
        if row is None:
            return None
        return row[0], Shop(row[1], row[2], row[3], bool(row[4]))

    def admitted(self, device_id: str, *, at: float) -> None:
        """Central made the device's client and role at the production broker."""
        with self._transaction() as conn:
            conn.execute(devices.update().where(devices.c.device_id == device_id).values(admitted_at=at))

    def activate(self, code_id: str, token: str, *, device_id: str, public_key: str, now: float) -> Shop:
        """Use the code for this device and key, once, and register the device for the code's shop.
        The same device asking again with the same key gets the same answer (its result was lost);
        anything else raises ActivationRefused with the reason, and changes nothing."""
        codes = activation_codes
        with self._transaction() as conn:
            row = conn.execute(sa.select(codes.c.shop, codes.c.token, codes.c.device, codes.c.expires_at,
                                         codes.c.used_by, codes.c.used_key, codes.c.withdrawn_at)
                               .where(codes.c.code_id == code_id).with_for_update()).first()
            if row is None or row[1] != token:
                raise ActivationRefused("central never issued this code")
            licence, _, bound, expires_at, used_by, used_key, withdrawn_at = row
            if used_by is not None and (used_by, used_key) != (device_id, public_key):
                raise ActivationRefused("the code was already used by another box")
            if used_by is None and withdrawn_at is not None:
                raise ActivationRefused("the code was withdrawn by operations")
            if used_by is None and now > expires_at:
                raise ActivationRefused("the code has expired")
            if bound is not None and bound != device_id:
                raise ActivationRefused(f"the code was issued for device {bound}")
            self._lock(conn, "shop", licence)  # the shop's, then the device's: as register and shop_left
            self._lock(conn, "device", device_id)
            existing = self.device(device_id)
            if existing is not None and existing.public_key != public_key:
                raise ActivationRefused(f"device {device_id} is registered with another key")
            if existing is not None and existing.revoked_at is not None:
                raise ActivationRefused(f"device {device_id} was revoked; a revoked box is activated again only "
                                        "after it has erased itself, as a new box")
            if existing is not None and used_by is None:
                raise ActivationRefused(f"device {device_id} is already active for shop {existing.shop}")
            shop = self.shop(licence)
            if shop.left_at is not None and existing is None:
                raise ActivationRefused(f"shop {licence} has left; its codes activate no box")
            if existing is not None:
                # This box's own request again (its result was lost, or a replay): the same answer, and
                # nothing changes (its registration, region and upload history stand).
                return dataclasses.replace(shop, region=existing.region)
            conn.execute(codes.update().where(codes.c.code_id == code_id).values(
                used_by=device_id, used_key=public_key, used_at=sa.func.coalesce(codes.c.used_at, now)))
            self.register(device_id, public_key, shop=shop.licence, region=shop.region, replace=True)
            conn.execute(waiting.delete().where(waiting.c.device_id == device_id))
        return shop

    def withdraw_code(self, code_id: str, *, at: float) -> None:
        """Withdraw a code no box has used: central refuses it from then on. ActivationRefused for one used
        (its box is revoked, not its code) or never issued."""
        codes = activation_codes
        with self._transaction() as conn:
            row = conn.execute(sa.select(codes.c.used_by).where(codes.c.code_id == code_id).with_for_update()).first()
            if row is None:
                raise ActivationRefused(f"central never issued a code {code_id}")
            if row.used_by is not None:
                raise ActivationRefused(f"code {code_id} was used by device {row.used_by}: revoke the box instead")
            conn.execute(codes.update().where(codes.c.code_id == code_id)
                         .values(withdrawn_at=sa.func.coalesce(codes.c.withdrawn_at, at)))

    def codes(self, shop: str | None = None) -> list[dict[str, Any]]:
        """The activation codes issued (``shop``'s alone, given its licence), newest first; never their tokens,
        which activate a box for the shop while they are unused."""
        codes = activation_codes
        query = sa.select(codes.c.code_id, codes.c.shop, codes.c.device, codes.c.issued_at, codes.c.expires_at,
                          codes.c.used_by, codes.c.used_at, codes.c.withdrawn_at
                          ).order_by(codes.c.issued_at.desc(), codes.c.code_id)
        with self._transaction(write=False) as conn:
            rows = conn.execute(query if shop is None else query.where(codes.c.shop == shop)).all()
        return [dict(zip(("code", "shop", "device", "issued_at", "expires_at", "used_by", "used_at", "withdrawn_at"),
                         row)) for row in rows]

    def waiting(self, device_id: str, public_key: str, agent_version: str, seen_at: float, *,
                retained: bool = False) -> None:
        """A box waiting for activation said hello. A ``retained`` copy (sent again to central as it
        subscribes) is no sight of the box now: it notes a box not known yet, as seen when it said it
        (``seen_at`` is then that, at most the time received), and moves nothing of one known."""
        with self._transaction() as conn:
            self._lock(conn, "device", device_id)
            if self.device(device_id) is None:
                insert = self._insert(conn, waiting).values(device_id=device_id, public_key=public_key,
                                                            agent_version=agent_version, seen_at=seen_at)
                conn.execute(insert.on_conflict_do_nothing(index_elements=[waiting.c.device_id]) if retained else
                             insert.on_conflict_do_update(
                                 index_elements=[waiting.c.device_id],
                                 set_={name: insert.excluded[name] for name in ("public_key", "agent_version",
                                                                                "seen_at")}))
            if not retained:
                # A waiting box says hello every minute: one not heard for a day is off, or was never a box
                # (anyone may say hello, each under a key of its own), and says it again when it is on.
                conn.execute(waiting.delete().where(waiting.c.seen_at < seen_at - WAITING_KEPT))

    def waiting_devices(self, now: float | None = None) -> list[dict[str, Any]]:
        """The boxes waiting for activation heard within WAITING_KEPT of ``now`` (default: the clock's), newest
        first."""
        since = (time.time() if now is None else now) - WAITING_KEPT
        with self._transaction(write=False) as conn:
            rows = conn.execute(sa.select(waiting.c.device_id, waiting.c.public_key, waiting.c.agent_version,
                                          waiting.c.seen_at).where(waiting.c.seen_at >= since)
                                .order_by(waiting.c.seen_at.desc())).all()
        return [dict(zip(("device", "public_key", "agent_version", "seen_at"), row)) for row in rows]

    # -- documents ---------------------------------------------------------------

    def issue_document(self, sign: Callable[[int], tuple[str, str, str, float, float, bytes]], name: str, *,
                       heeding: tuple[str, str] | None = None, past_boxes: bool = False) -> tuple[int, bytes]:
        """Give ``name``'s stream its next version, have ``sign(version)`` make the document
        (kind, scope, kid, issued_at, expires_at, token) and keep it; return (version, token).

        ``heeding`` ("region", R) or ("device", D): the boxes the document is for. One of them (not revoked)
        that says it applied a version of the stream, for itself or its region, that this database never
        issued stops it (RegistryError, naming the box, nothing signed): central's database was restored from
        a backup older than its last pushes, and the box would refuse the next version as a replay; or the
        box's word is false. With ``past_boxes`` (operations looked, and the database was restored) the version
        is numbered past the box's."""
        applied, device = (0, "")
        if heeding is not None:
            with self._transaction(write=False) as conn:
                applied, device = self._highest_applied(conn, name, heeding)  # before the lock: it reads many events
        with self._transaction() as conn:
            self._lock(conn, "document", name)
            issued = conn.execute(sa.select(sa.func.coalesce(sa.func.max(documents.c.version), 0))
                                  .where(documents.c.name == name)).scalar_one()
            if applied > issued and not past_boxes:
                raise RegistryError(
                    f"device {device} says it applied {name} version {applied}, but this database issued "
                    + (f"{name} only up to version {issued}" if issued else f"no {name}") + ". If central's "
                    "database was restored from a backup older than its last pushes, push again with --past-boxes: "
                    f"the new version is numbered {applied + 1}, past what the box holds (it refuses an older one "
                    f"as a replay). If not, device {device}'s word is false: look at it (revoked, its word no longer "
                    "counts). Nothing is signed")
            version = max(issued, applied if past_boxes else 0) + 1
            if version > protocol.MAX_INTEGER:
                raise RegistryError(
                    f"{name} version {version} is past the highest a box takes ({protocol.MAX_INTEGER})"
                    + (f": device {device} says it applied version {applied}, a word no box could have had from "
                       "central; revoke it, and its word no longer counts" if applied > issued else "")
                    + ". Nothing is signed")
            kind, scope, kid, issued_at, expires_at, token = sign(version)
            conn.execute(documents.insert().values(name=name, version=version, kind=kind, scope=scope, kid=kid,
                                                   issued_at=issued_at, expires_at=expires_at, token=token))
        return version, token

    @staticmethod
    def _highest_applied(conn: sa.Connection, name: str, heeding: tuple[str, str]) -> tuple[int, str]:
        """(version, device) of the highest version of ``name`` that a box ``heeding`` names, not revoked, says it
        applied for itself or its region ((0, "") for none): its ``document`` events, as the box wrote them."""
        what, which = heeding
        boxes = sa.select(devices.c.device_id, devices.c.region).where(
            devices.c.revoked_at.is_(None), (devices.c.region if what == "region" else devices.c.device_id) == which
        ).subquery()
        highest = (0, "")
        for device, region, body in conn.execute(
                sa.select(_events.c.device_id, boxes.c.region, _events.c.body)
                .join(boxes, boxes.c.device_id == _events.c.device_id).where(
                    _events.c.kind == "document",
                    _events.c.body.contains(json.dumps(name, ensure_ascii=False), autoescape=True))):
            document = json.loads(body)
            version, scope = document.get("version"), document.get("scope")
            if document.get("name") != name or not protocol.natural(version) or version <= highest[0]:
                continue
            if not meant_for(scope, device, region):  # what the box holds now: its own, its region's
                continue
            highest = (version, device)
        return highest

    def latest_document(self, name: str, scope: str) -> bytes | None:
        """The token of the newest version of ``name`` issued for ``scope`` (its JSON, as kept), or None."""
        with self._transaction(write=False) as conn:
            return conn.execute(sa.select(documents.c.token).where(documents.c.name == name, documents.c.scope == scope)
                                .order_by(documents.c.version.desc()).limit(1)).scalar()

    def documents_in_force(self, now: float) -> list[tuple[str, str, int, bytes, float | None]]:
        """(name, scope, version, token, expires_at) of the newest version of each document stream for each
        scope (its JSON, as kept) that has not expired at ``now``, and every revocation (a box takes one
        whenever it comes: its expires_at None): what the broker should hold, retained, and until when."""
        newest = (sa.select(documents.c.name, documents.c.scope, sa.func.max(documents.c.version).label("version"))
                  .group_by(documents.c.name, documents.c.scope).subquery())
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                sa.select(documents.c.name, documents.c.scope, documents.c.version, documents.c.token,
                          documents.c.kind, documents.c.expires_at)
                .join(newest, sa.and_(documents.c.name == newest.c.name, documents.c.scope == newest.c.scope,
                                      documents.c.version == newest.c.version))
                .where(sa.or_(documents.c.expires_at > now, documents.c.kind == "revocation"))
                .order_by(documents.c.name, documents.c.scope)).all()
        return [(name, scope, version, bytes(token), None if kind == "revocation" else expires_at)
                for name, scope, version, token, kind, expires_at in rows]

    def document_published(self, name: str, version: int) -> None:
        with self._transaction() as conn:
            conn.execute(documents.update().where(documents.c.name == name, documents.c.version == version)
                         .values(published_at=time.time()))

    @staticmethod
    def _of_journal(conn: sa.Connection, device_id: str) -> sa.ColumnElement[bool]:
        """Events of the device, and those of the devices that held its journal before it (its box's journal
        restored onto it) that it counts as delivered: what its box holds. The devices are looked up first, so
        that both databases read events by device (most devices hold their journal alone)."""
        row = conn.execute(sa.select(devices.c.journal, devices.c.acked_seq)
                           .where(devices.c.device_id == device_id)).first()
        others = [] if row is None or row.journal is None else conn.execute(sa.select(devices.c.device_id).where(
            devices.c.journal == row.journal, devices.c.device_id != device_id)).scalars().all()
        if not others:
            return _events.c.device_id == device_id
        own = _events.alias("own")
        return sa.or_(_events.c.device_id == device_id, sa.and_(
            # Another's, up to what this device is acknowledged to, at a seq it holds none of (past the backup
            # it was restored from, the old box went on with events this one never had).
            _events.c.device_id.in_(others), _events.c.seq <= row.acked_seq,
            ~sa.exists().where(own.c.device_id == device_id, own.c.seq == _events.c.seq)))

    def documents_held(self, device_id: str) -> dict[str, int]:
        """The version of each document stream the device's box applied last (the ``document`` events of its
        journal, for this device or its region, as the box counts them): the one in force, the highest but for a
        box moved to another region and back (it applies its region's again)."""
        with self._transaction(write=False) as conn:
            region = conn.execute(sa.select(devices.c.region).where(devices.c.device_id == device_id)).scalar()
            bodies = conn.execute(sa.select(_events.c.body).where(self._of_journal(conn, device_id),
                                                                  _events.c.kind == "document")
                                  .order_by(_events.c.seq)).scalars().all()
        held: dict[str, int] = {}
        for body in bodies:
            document = json.loads(body)
            name, version, scope = document.get("name"), document.get("version"), document.get("scope")
            # One not as a box writes it (a text version, a list for a name) says nothing of what it holds; one
            # for another device (the box whose journal this was) or region is not what this one holds (a box
            # registered with no region: central cannot tell, and takes its box's word).
            if not meant_for(scope, device_id, region or None):
                continue
            if isinstance(name, str) and protocol.natural(version):
                held[name] = version
        return held

    def documents_issued(self, device_id: str, now: float) -> dict[str, int]:
        """The newest version of each document stream issued for the device or its region and not expired at
        ``now`` (a revocation never is): what its box should hold once it has taken all it was sent. A revoked
        box takes nothing issued after its revocation but the revocation: what its region got since is not its."""
        with self._transaction(write=False) as conn:
            region, revoked_at = conn.execute(sa.select(devices.c.region, devices.c.revoked_at)
                                              .where(devices.c.device_id == device_id)).first() or (None, None)
            scopes = [json.dumps({"device": device_id})] + ([json.dumps({"region": region})] if region else [])
            for_it = [documents.c.scope.in_(scopes), sa.or_(documents.c.expires_at > now, documents.c.kind == "revocation")]
            if revoked_at is not None:
                for_it.append(sa.or_(documents.c.issued_at <= revoked_at, documents.c.kind == "revocation"))
            rows = conn.execute(sa.select(documents.c.name, sa.func.max(documents.c.version))
                                .where(*for_it).group_by(documents.c.name)).all()
        return {name: version for name, version in rows}

    def signed_batches(self, device_id: str, after: int = 0) -> Iterator[bytes]:
        """The batches that brought central the device's events after seq ``after``, as the box signed them,
        in the order central took them (a batch sent again over a range partly held is among them, whole)."""
        last, step = -1, 100  # a few at a time: a year of a busy box is thousands of batches
        while True:
            with self._transaction(write=False) as conn:
                rows = conn.execute(sa.select(batches.c.id, batches.c.deflated)
                                    .where(batches.c.device_id == device_id, batches.c.last_seq > after,
                                           batches.c.id > last).order_by(batches.c.id).limit(step)).all()
            for row in rows:
                yield zlib.decompress(row[1])
            if len(rows) < step:
                return
            last = rows[-1][0]

    def prices_loaded_on_the_box(self, device_id: str) -> bool:
        """Whether the newest price list of the device's journal is one loaded on the box (``counterbox prices
        load``), after any operations pushed: it sells at prices no document of central's says."""
        with self._transaction(write=False) as conn:
            journal = self._of_journal(conn, device_id)
            newest = conn.execute(sa.select(sa.func.max(_events.c.seq)).where(
                journal, _events.c.kind == "price_list")).scalar()
            if newest is None:
                return False
            bodies = conn.execute(sa.select(_events.c.body).where(journal,
                                                                  _events.c.kind == "document")).scalars().all()
        pushed = [json.loads(body).get("content_seq") for body in bodies]
        return newest not in pushed

    # -- presence and health ---------------------------------------------------------

    def record_status(self, device_id: str, status: dict[str, Any], *, received_at: float, live: bool,
                      clocked: bool | None = None, queued_at_most: float = 7 * 86400.0) -> bool:
        """Keep ``status`` as the device's latest, unless a later one is held (protocol.status_order;
        a retained status sent again on subscribing may be older); True when it is now the latest.
        Only a live status measures the device's clock, and not one that may have waited in central's
        queue at the broker (``clocked`` False; by default, ``live``), for at most ``queued_at_most``
        seconds (the broker's session expiry for central)."""
        clocked = live if clocked is None else clocked and live
        with self._transaction() as conn:
            self._lock(conn, "status", device_id)
            held = conn.execute(sa.select(device_status.c.session, device_status.c.connection, device_status.c.state,
                                          device_status.c.sent_at, device_status.c.clock_offset,
                                          device_status.c.received_at, device_status.c.backlog_seq,
                                          device_status.c.backlog_since)
                                .where(device_status.c.device_id == device_id)).first()
            if live and status["state"] == "online":
                # A status that may have waited in central's queue at the broker (central away over a weekend)
                # reports the day the box sent it, on central's clock as the box's offset last measured puts it:
                # filed under the day central took it in, it failed the days the box was there.
                # A box whose clock central never measured says nothing central can place (its clock may say
                # 1970): the day central took it in. Nor did any wait longer than central's queue is kept.
                measured = held[4] if held else None
                said = received_at if clocked or measured is None else \
                    max(received_at - queued_at_most, min(received_at, status["sent_at"] - measured))
                insert = self._insert(conn, upload_days).values(device_id=device_id, day=_local_day(said), reports=1)
                conn.execute(insert.on_conflict_do_update(
                    index_elements=[upload_days.c.device_id, upload_days.c.day],
                    set_={"reports": upload_days.c.reports + 1}))
            if status.get("erasing") is True:
                # A revoked box's last word (retained: taken again as central subscribes): it stays said.
                last = status.get("last_seq")
                conn.execute(devices.update().where(devices.c.device_id == device_id, devices.c.revoked_at.is_not(None),
                                                    devices.c.erasing_at.is_(None)).values(
                    erasing_at=received_at, erasing_seq=last if protocol.natural(last, 0) else None))
            if held:
                before = protocol.status_order(dict(zip(("session", "connection", "state", "sent_at"), held)))
                after = protocol.status_order(status)
                # Within one connection, live statuses come in the order the box sent them (MQTT keeps a
                # connection's order): the later one received is the newer, whatever the box's clock says
                # (set back by NTP after a start, it would leave every later status "older"). A retained
                # copy, sent again on subscribing, is placed by the time it was signed.
                if live and before[:3] == after[:3]:
                    if held[5] is not None and received_at < held[5]:
                        return False
                elif before > after or (not live and before == after):
                    return False  # older, or the one held again (retained, sent on subscribing): nothing new
            offset = status["sent_at"] - received_at if clocked and status["state"] == "online" else (held[4] if held else None)
            body = {k: v for k, v in status.items() if k not in ("v", "device", "state", "session", "connection", "sent_at")}
            values = {"state": status["state"], "session": status["session"], "connection": status["connection"],
                      "sent_at": status["sent_at"], "received_at": received_at, "clock_offset": offset,
                      "body": json.dumps(body, ensure_ascii=False),
                      **self._backlog_waiting(conn, device_id, status, held, received_at=received_at, live=live,
                                              queued=live and not clocked)}
            insert = self._insert(conn, device_status).values(device_id=device_id, **values)
            conn.execute(insert.on_conflict_do_update(index_elements=[device_status.c.device_id],
                                                      set_={name: insert.excluded[name] for name in values}))
        return True

    @staticmethod
    def _backlog_waiting(conn: sa.Connection, device_id: str, status: dict[str, Any], held: sa.Row | None, *,
                         received_at: float, live: bool, queued: bool = False) -> dict[str, Any]:
        """The device's backlog mark after ``status`` (the latest now): the last seq it held unacknowledged
        when central first saw it so, and when, less the time the box was away since, and the time central
        was (``queued``: a status that may have waited in central's queue at the broker; central acknowledges
        nothing while away). A live status that finds it still there adds how long it has waited to its day.
        Its own clock plays no part: both times are central's."""
        since = (held.backlog_seq, held.backlog_since) if held else (None, None)
        last, acked = status.get("last_seq"), status.get("acked_seq")
        if status["state"] != "online" or last is None or acked is None:
            return {}  # an offline status tells nothing of the backlog: the mark stays as it was
        seq, at = since
        if seq is not None and (acked >= seq or last < seq):  # delivered; or another journal's seqs now
            seq = at = None
        elif at is not None and (held.state == "offline" or queued):
            # Back after its will (or central back, which acknowledges nothing while away): the time since, the box
            # was away, which its sales' lateness judges (or central was, no fault of the box's). A backlog
            # seen at closing and delivered in the morning's first minute fails no second day; one refused
            # through every reconnection still adds up its connected time (and all of it, where no will came).
            at += max(0.0, received_at - held.received_at)
        if seq is None and last > acked:
            seq, at = last, received_at
        if live and at is not None and received_at > at:
            waited = received_at - at
            current = sa.func.coalesce(upload_days.c.waited, 0.0)
            conn.execute(upload_days.update()
                         .where(upload_days.c.device_id == device_id, upload_days.c.day == _local_day(received_at))
                         .values(waited=sa.case((current > waited, current), else_=waited)))
        return {"backlog_seq": seq, "backlog_since": at}

    def revocation_delivered(self, device_id: str) -> bool:
        """Whether central holds the device's revocation event and everything before it: one of a revocation
        issued since the device was revoked, not one its journal recorded for the box it was restored from."""
        return self.revocation_taken(device_id) is not None

    def revocation_taken(self, device_id: str) -> tuple[float, float] | None:
        """(when central received it, its grace in seconds) of the device's revocation event, once central holds
        it and everything before it (revocation_delivered); None before. The grace is the one operations signed,
        as central keeps it: the box's event says when it took its revocation, never how long it may stay."""
        with self._transaction(write=False) as conn:
            row = conn.execute(sa.select(devices.c.acked_seq, devices.c.revoked_at)
                               .where(devices.c.device_id == device_id)).first()
            if row is None or row.revoked_at is None:
                return None
            events = conn.execute(sa.select(_events.c.body, _events.c.received_at).where(
                _events.c.device_id == device_id, _events.c.kind == "revocation", _events.c.seq <= row.acked_seq)
            ).all()
            signed = conn.execute(sa.select(documents.c.token).where(
                documents.c.name == "revocation", documents.c.scope == json.dumps({"device": device_id}),
                documents.c.issued_at >= row.revoked_at - 1).order_by(documents.c.version.desc()).limit(1)).scalar()
        for body, received_at in events:
            body = json.loads(body)
            # Signed on the operations machine just after it marked the device revoked, to the millisecond.
            at = _timestamp(body.get("issued_at"))
            if at is not None and at >= row.revoked_at - 1:
                return received_at, _grace(signed)
        return None

    def upload_days(self, device_id: str, first_day: str, last_day: str, *, deadline: float) -> list[UploadDay]:
        """Each day from ``first_day`` to ``last_day`` (YYYY-MM-DD, central's local calendar) on which the
        device was registered, with what central saw of its uploads that day; none after today (a day
        still to come was not missed)."""
        with self._transaction(write=False) as conn:
            device = conn.execute(sa.select(devices.c.registered_at, devices.c.revoked_at)
                                  .where(devices.c.device_id == device_id)).first()
            if device is None:
                return []
            reported = {day: (reports, waited) for day, reports, waited in conn.execute(
                sa.select(upload_days.c.day, upload_days.c.reports, upload_days.c.waited).where(
                    upload_days.c.device_id == device_id, upload_days.c.day.between(first_day, last_day)))}
            sales = conn.execute(sa.select(_events.c.body, _events.c.received_at, _events.c.sent_at).where(
                _events.c.device_id == device_id, _events.c.kind == "sale")).all()
            offset = conn.execute(sa.select(device_status.c.clock_offset)
                                  .where(device_status.c.device_id == device_id)).scalar()
        # Days and lateness in Python, the same on either database: a sale came late if it waited on the box
        # more than ``deadline`` after its scan (_waited), and its day is its scan's, in central's local calendar.
        counts: dict[str, tuple[int, int]] = {}
        for body, received_at, sent_at in sales:
            waited = _waited(_timestamp(json.loads(body).get("scanned_at")), received_at, sent_at, offset)
            if waited is None:
                continue
            day = _local_day(received_at - waited)
            if first_day <= day <= last_day:
                total, late = counts.get(day, (0, 0))
                counts[day] = (total + 1, late + (waited > deadline))
        registered, revoked = (None if at is None else _local_day(at) for at in device)
        day = date.fromisoformat(max(first_day, registered or first_day))
        last = date.fromisoformat(min(last_day, _local_day(time.time())))
        days = []
        while day <= last and not (revoked and day.isoformat() > revoked):
            total, late = counts.get(day.isoformat(), (0, 0))
            reports, waited = reported.get(day.isoformat(), (0, None))
            days.append(UploadDay(day.isoformat(), reports, total, late, held_back=(waited or 0.0) > deadline))
            day += timedelta(days=1)
        return days

    def status(self, device_id: str) -> DeviceStatus | None:
        with self._transaction(write=False) as conn:
            row = conn.execute(sa.select(device_status.c.state, device_status.c.session, device_status.c.sent_at,
                                         device_status.c.received_at, device_status.c.clock_offset,
                                         device_status.c.body).where(device_status.c.device_id == device_id)).first()
        if row is None:
            return None
        state, session, sent_at, received_at, offset, body = row
        return DeviceStatus(state, session, sent_at, received_at, offset, json.loads(body))

    def order_closed(self, device_id: str, name: str) -> int | None:
        """The seq of the ``receiving_closed`` event of the device's journal that closed the order stream ``name``,
        if central holds one: a box takes no copy of a closed order again, nor does the box its journal was
        restored onto (its own or another device's events of that journal)."""
        with self._transaction(write=False) as conn:
            rows = conn.execute(sa.select(_events.c.seq, _events.c.body).where(
                self._of_journal(conn, device_id), _events.c.kind == "receiving_closed").order_by(_events.c.seq)).all()
        return next((seq for seq, body in rows if json.loads(body).get("order") == name), None)

    def device_events(self, device_id: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """One device's events in order, as (seq, kind, body): what a report folds."""
        query = sa.select(_events.c.seq, _events.c.kind, _events.c.body).where(_events.c.device_id == device_id)
        with self.engine.connect() as conn:
            rows = conn.execution_options(yield_per=1000).execute(query.order_by(_events.c.seq))
            for seq, kind, body in rows:
                yield seq, kind, json.loads(body)

    def journal_events(self, device_id: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """The events of the device's journal in order, as (seq, kind, body): its own, and those it counts as
        delivered by another device of the same journal (its box's journal restored onto it, or its id moved
        away and back), as far as it is acknowledged: what its box folds for its shelf. Where two others
        hold a seq, the one registered last (the branch it was restored from)."""
        with self._transaction(write=False) as conn:
            row = conn.execute(sa.select(devices.c.journal, devices.c.acked_seq)
                               .where(devices.c.device_id == device_id)).first()
        if row is None or row.journal is None:
            yield from self.device_events(device_id)
            return
        lineage = sa.select(devices.c.device_id, devices.c.registered_at).where(
            devices.c.journal == row.journal).subquery()
        mine = sa.case((_events.c.device_id == device_id, 1), else_=0)
        query = (sa.select(_events.c.seq, _events.c.kind, _events.c.body)
                 .join(lineage, lineage.c.device_id == _events.c.device_id)
                 .where(sa.or_(_events.c.device_id == device_id, _events.c.seq <= row.acked_seq))
                 .order_by(_events.c.seq, mine.desc(), lineage.c.registered_at.desc()))
        with self.engine.connect() as conn:
            last = 0
            for seq, kind, body in conn.execution_options(yield_per=1000).execute(query):
                if seq != last:
                    last = seq
                    yield seq, kind, json.loads(body)

    def event_at(self, device_id: str, seq: int) -> tuple[str, dict[str, Any]] | None:
        """The device's event ``seq`` as (kind, body); None when it holds none at that seq."""
        with self._transaction(write=False) as conn:
            row = conn.execute(sa.select(_events.c.kind, _events.c.body).where(_events.c.device_id == device_id,
                                                                               _events.c.seq == seq)).first()
        return (row.kind, json.loads(row.body)) if row is not None else None

    def received_at(self, device_id: str, seq: int) -> float | None:
        """When central took the device's event ``seq`` (None: it holds none at that seq)."""
        with self._transaction(write=False) as conn:
            return conn.execute(sa.select(_events.c.received_at).where(_events.c.device_id == device_id,
                                                                       _events.c.seq == seq)).scalar()

    def holds_journal(self, device_id: str) -> bool:
        """Whether the device's journal goes on at this device now, not at another device it was restored
        onto (or moved to): of its journal's devices still serving, the one whose latest event central
        received last (one with none of its own yet after one that has: the same shelf, until it sends).
        A device that names no journal holds its own."""
        names, holder = self._journal_holder(device_id)
        return not names or holder == device_id

    def journal_holder(self, device_id: str) -> str | None:
        """The device the device's journal goes on at now (as holds_journal says); None when it names none,
        or no device still serving holds it."""
        return self._journal_holder(device_id)[1]

    def _journal_holder(self, device_id: str) -> tuple[bool, str | None]:
        with self._transaction(write=False) as conn:
            journal = conn.execute(sa.select(devices.c.journal).where(devices.c.device_id == device_id)).scalar()
            if journal is None:
                return False, None
            # Each device's own latest event, by its key (device, seq): never a look at all of central's events.
            latest = (sa.select(_events.c.received_at).where(_events.c.device_id == devices.c.device_id)
                      .order_by(_events.c.seq.desc()).limit(1).correlate(devices).scalar_subquery())
            holder = conn.execute(
                sa.select(devices.c.device_id).where(devices.c.journal == journal, devices.c.revoked_at.is_(None))
                .order_by(sa.func.coalesce(latest, 0).desc(), devices.c.registered_at.desc(), devices.c.device_id)
                .limit(1)).scalar()
        return True, holder

    def events(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        query = sa.select(_events.c.device_id, _events.c.seq, _events.c.kind, _events.c.session, _events.c.body)
        if kind:
            query = query.where(_events.c.kind == kind)
        # Streamed (an export may be every event central holds), on a connection of its own: the
        # caller may use the store between rows.
        with self.engine.connect() as conn:
            rows = conn.execution_options(yield_per=1000).execute(query.order_by(_events.c.device_id, _events.c.seq))
            for device_id, seq, kind_, session, body in rows:
                yield {**_beside(json.loads(body)), "device": device_id, "seq": seq, "kind": kind_, "session": session}



# An exported event's own fields: a body field of the same name (a document event's kind of document, a
# damaged event's kind) goes beside them as body_NAME, never over them.
_ROW_FIELDS = ("device", "seq", "kind", "session")


def _beside(body: dict[str, Any]) -> dict[str, Any]:
    if not any(name in body for name in _ROW_FIELDS):
        return body
    return {f"body_{name}" if name in _ROW_FIELDS else name: value for name, value in body.items()}


def _waited(scanned: float | None, received_at: float, sent_at: float | None, offset: float | None) -> float | None:
    """How long a sale scanned at ``scanned`` (the box's clock) took to reach central (``received_at``, central's);
    None with no scan time. A box's clock may be off by hours or days, so not the difference of the two: the
    time from the scan to the sending of its batch (``sent_at``), both by the box's clock; else, for a batch that
    said no time, the scan put on central's clock by the box's ``offset`` as its live statuses measure it (the
    latest: it may have been set right since); else the scan as it says. Never less than nothing: no sale was
    scanned after it reached central."""
    if scanned is None:
        return None
    if sent_at is not None:
        return max(sent_at - scanned, 0.0)
    return max(received_at - (scanned - (offset or 0.0)), 0.0)


def _local_day(timestamp: float) -> str:
    """The day ``timestamp`` falls on in central's local calendar, YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d", time.localtime(timestamp))


WAITING_KEPT = 86400.0  # seconds a box waiting for activation stays listed after its last hello


def _wait_for_locks(dbapi_connection, record) -> None:
    """On each new PostgreSQL connection: a writer waits for another's lock as long as on SQLite (its busy
    timeout), then fails, so that a row held by a peer frozen mid-transaction holds up one message, never all
    ingest. Set as a statement, not a startup option: it would replace the URL's own ``options`` (a
    search_path) and PGOPTIONS, and a pooler may refuse startup options."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = {sqlite.BUSY_TIMEOUT_MS}")
    dbapi_connection.commit()


def _lock_waited_out(error: sa.exc.OperationalError) -> bool:
    """A lock waited for past the time allowed: PostgreSQL's lock_timeout, SQLite's busy timeout."""
    return getattr(error.orig, "sqlstate", None) == "55P03" or "database is locked" in str(error.orig)


def _grace(token: bytes | None) -> float:
    """The grace in seconds a revocation central issued gives its box (none without one: a device marked
    revoked with no revocation signed)."""
    if token is None:
        return 0.0
    body = json.loads(jws.b64url_decode(bytes(token).decode("ascii").split(".")[1])).get("body", {})
    grace = body.get("grace_seconds")
    return float(grace) if protocol.natural(grace, 0) else 0.0


def _timestamp(text: Any) -> float | None:
    """An RFC 3339 time (the wire's, e.g. 2026-11-27T09:12:03.418Z) as a Unix timestamp; None if it is not one.
    One without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


class _Statements:
    """``store.conn.execute(sql, params)``: SQL with ``?`` parameters, run and committed at once."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def execute(self, sql: str, params: Any = ()) -> _Rows:
        with self.engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                if conn.dialect.paramstyle != "qmark":
                    sql = sql.replace("?", "%s")
                result = conn.exec_driver_sql(sql, tuple(params))
                return _Rows(result.all() if result.returns_rows else [])


class _Rows(list):
    def fetchone(self):
        return self[0] if self else None

    def fetchall(self):
        return list(self)
