"""A real PostgreSQL server for the tests, of their own: Debian's postgresql-15, started once per session.

    with PostgreSQL() as server:             # initdb into a temporary directory, then postgres
        url = server.create_database()       # postgresql+psycopg://postgres@/test_1?host=...&port=...
        ...
        server.drop_database(url)

The server listens on a Unix socket in its own directory only (no TCP port to collide with another
run), trusts local connections, and runs without fsync: the tests check what the store does, not
the disk. PostgreSQL refuses to run as root, so under root initdb and postgres run as the postgres
user, which owns the directory. Nothing is skipped: a server that does not start is a failure, with
its log.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

BIN = Path(os.environ.get("COUNTERBOX_PG_BIN", "/usr/lib/postgresql/15/bin"))
PORT = 5432  # names the socket file only: the directory is this server's own
START_TIMEOUT = 30.0


class PostgreSQLError(RuntimeError):
    pass


class PostgreSQL:
    def __init__(self) -> None:
        self.dir: Path | None = None
        self.process: subprocess.Popen | None = None
        self._names = itertools.count(1)

    def __enter__(self) -> PostgreSQL:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _as_owner(self) -> dict:
        """subprocess arguments that run a program as the server's owner: postgres under root."""
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise PostgreSQLError("running as root and there is no postgres user to run PostgreSQL as "
                                  "(install Debian's postgresql-15: ./bootstrap)") from None
        return {"user": "postgres", "group": "postgres"}

    def start(self) -> None:
        for program in ("initdb", "postgres"):
            if not (BIN / program).exists():
                raise PostgreSQLError(f"{BIN / program} is missing: install Debian's postgresql-15 (./bootstrap)")
        owner = self._as_owner()
        self.dir = Path(tempfile.mkdtemp(prefix="counterbox-pg-"))
        if owner:
            shutil.chown(self.dir, "postgres", "postgres")
        data, log = self.dir / "data", self.dir / "postgres.log"
        initdb = subprocess.run([BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                 "--locale=C", "--no-sync"], cwd=self.dir, capture_output=True, text=True, **owner)
        if initdb.returncode != 0:
            raise PostgreSQLError(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}{initdb.stderr}")
        with open(log, "wb") as out:
            if owner:
                shutil.chown(log, "postgres", "postgres")
            self.process = subprocess.Popen(
                [BIN / "postgres", "-D", data, "-k", self.dir, "-p", str(PORT), "-c", "listen_addresses=",
                 "-c", "fsync=off", "-c", "max_connections=100"],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **owner)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise PostgreSQLError(f"postgres exited ({self.process.returncode}) before accepting connections:\n"
                                      + log.read_text(errors="replace")[-3000:])
            try:
                psycopg.connect(**self._params("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise PostgreSQLError(f"postgres did not accept connections in {START_TIMEOUT:.0f} s: {error}\n"
                                          + log.read_text(errors="replace")[-3000:]) from error
                time.sleep(0.05)

    def _params(self, dbname: str) -> dict:
        return {"host": str(self.dir), "port": PORT, "user": "postgres", "dbname": dbname}

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@/{dbname}?host={self.dir}&port={PORT}"

    def create_database(self) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(**self._params("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.split("/")[3].split("?")[0]
        with psycopg.connect(**self._params("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: ends the clients' sessions
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
