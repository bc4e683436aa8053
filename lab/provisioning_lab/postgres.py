"""A real PostgreSQL as a subprocess: for the tests, the soak and the benchmarks (as ``broker`` is for Mosquitto).

``PostgresServer`` runs ``initdb`` once in its directory, then ``postgres -D <data>`` bound to
127.0.0.1 on a free port, with trust authentication for the user ``ledger`` and a database of
the same name::

    with PostgresServer(workdir / "pg") as server:
        url = server.url  # postgresql://ledger@127.0.0.1:PORT/ledger
        server.stop()     # a fast shutdown (clients are cut off), as a database host going away
        server.start()    # same port, same data

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` system user
(or ``nobody``), and its files live in a directory of that user's under the system's temporary
directory (the caller's may sit under a path only root can enter), removed by ``close()`` or at
the end of a ``with`` block. Without the binaries, ``start()``
raises :class:`PostgresNotFound` whose message says how to install them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from provisioning_lab import _children
from provisioning_lab._ports import free_port

__all__ = ["POSTGRES_MISSING", "PostgresNotFound", "PostgresServer", "PostgresStartError", "find_postgres"]

POSTGRES_MISSING: Final = (
    "PostgreSQL binaries (initdb, postgres) not found: install them (Debian/Ubuntu: apt-get install postgresql)"
)
HOST: Final = "127.0.0.1"
USER: Final = "ledger"
DATABASE: Final = "ledger"
BIN_DIRS: Final = ("/usr/local/bin", "/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
                   "/usr/lib/postgresql/15/bin", "/usr/pgsql/bin")  # fmt: skip # Debian keeps them off PATH
STARTUP_TIMEOUT_S: Final = 30.0  # initdb'd cluster starts in ~0.3 s; a loaded 2-core CI runner gets slack
STOP_TIMEOUT_S: Final = 10.0  # fast shutdown (SIGINT) ends sessions and checkpoints, then SIGKILL
POLL_S: Final = 0.05
RUN_AS: Final = ("postgres", "nobody")  # who runs the server when we are root


class PostgresNotFound(RuntimeError):
    """No ``initdb``/``postgres`` binaries."""


class PostgresStartError(RuntimeError):
    """initdb failed, or the server exited or did not listen in time; the message holds its log."""


def find_postgres() -> Path:
    """The directory holding ``initdb`` and ``postgres``; :class:`PostgresNotFound` otherwise."""
    initdb = shutil.which("initdb")
    candidates = [Path(initdb).parent] if initdb else []
    candidates += [Path(d) for d in BIN_DIRS]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    raise PostgresNotFound(POSTGRES_MISSING)


class PostgresServer:
    """A ``postgres`` subprocess on 127.0.0.1 with its own data directory."""

    def __init__(self, directory: Path, *, fsync: bool = True, settings: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.fsync = fsync  # off only where a power cut is not part of the test (it never is for a process kill)
        self.settings = dict(settings or {})
        self.host = HOST
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._user: tuple[int, int] | None = None
        self._home: Path | None = None  # where the cluster's files are (see the module docstring)

    @property
    def home(self) -> Path:
        """The cluster's own directory (data, socket, log)."""
        if self._home is None:
            if os.geteuid() == 0:
                self._user = _unprivileged_user()
                self._home = Path(tempfile.mkdtemp(prefix="provisioning-lab-pg-"))
                os.chown(self._home, *self._user)
            else:
                self._home = self.directory
        return self._home

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """A libpq URL for the ledger database (no password: trust on loopback)."""
        return f"postgresql://{USER}@{self.host}:{self.port}/{DATABASE}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> Self:
        """initdb on first use, then start the server and wait until it accepts connections."""
        if self._process is not None:
            raise RuntimeError("the server is already running")
        binaries = find_postgres()
        self._prepare(binaries)
        if self._port is None:
            self._port = free_port(HOST)
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - the PostgreSQL binary, our own arguments
                [str(binaries / "postgres"), "-D", str(self.data_dir), "-p", str(self._port),
                 "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={self.home / 'sock'}",
                 "-c", f"fsync={'on' if self.fsync else 'off'}",
                 *[arg for name, value in self.settings.items() for arg in ("-c", f"{name}={value}")]],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **self._as_user(),
            )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._ready():
            process = self._process
            if process.poll() is not None:
                self._process = None
                raise PostgresStartError(f"postgres exited with {process.returncode}; log:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise PostgresStartError(f"postgres did not accept connections in time; log:\n{self.log_text()}")
            time.sleep(POLL_S)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Fast shutdown (SIGINT: sessions are ended, nothing committed is lost), SIGKILL after ``timeout``."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(2)  # SIGINT = "fast" shutdown
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return _children.kill(process)

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends notice and exit; recovery replays the WAL at the next start)."""
        process, self._process = self._process, None
        if process is not None:
            _children.kill(process)

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server and remove the files it kept outside ``directory`` (as root), saving its log there."""
        self.stop()
        if self._home is not None and self._home != self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self.log_file.exists():
                shutil.copy(self.log_file, self.directory / "postgres.log")
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    def __repr__(self) -> str:
        return f"<PostgresServer {self.host}:{self._port} {'running' if self.running else 'stopped'}>"

    # -- helpers ---------------------------------------------------------------------------------

    def _prepare(self, binaries: Path) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "sock").mkdir(exist_ok=True)
        self.log_file.touch()
        if self._user is not None:
            for path in (self.home / "sock", self.log_file):
                os.chown(path, *self._user)
        if (self.data_dir / "PG_VERSION").exists():
            return
        result = subprocess.run(  # noqa: S603 - the PostgreSQL binary, our own arguments
            [str(binaries / "initdb"), "-D", str(self.data_dir), "-U", USER, "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, check=False, **self._as_user(),
        )  # fmt: skip
        if result.returncode != 0:
            raise PostgresStartError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def _as_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user[0], "group": self._user[1], "extra_groups": [], "cwd": str(self.home)}

    def _ready(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        return self._ensure_database()

    def _ensure_database(self) -> bool:
        """Create the ``ledger`` database once the server answers; False while it is still starting."""
        try:
            import psycopg  # optional: only needed once, to create the database
        except ImportError as exc:
            raise PostgresStartError("the psycopg package is needed to create the test database") from exc
        try:
            with psycopg.connect(
                f"postgresql://{USER}@{HOST}:{self.port}/postgres", autocommit=True, connect_timeout=2
            ) as connection:
                exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
                if exists is None:
                    connection.execute(f"CREATE DATABASE {DATABASE}")
        except psycopg.OperationalError:
            return False  # still starting up ("the database system is starting up")
        return True


def _unprivileged_user() -> tuple[int, int]:
    for name in RUN_AS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise PostgresStartError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
