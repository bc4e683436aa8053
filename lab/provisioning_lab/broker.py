"""A real Mosquitto as a subprocess: for the tests, the demo and the benchmarks.

``MosquittoBroker`` runs ``mosquitto -c <generated conf>`` bound to 127.0.0.1 on a free port, in its
own directory (configuration, log, password and ACL files, persistence database)::

    with MosquittoBroker(workdir / "broker", persistence=True, passwords={"gw": "pw"}) as broker:
        ...  # connect to broker.host, broker.port
        broker.restart()  # same port, same persistence directory
        print(broker.log_text())

``tls=BrokerTls(...)`` adds a TLS listener on ``broker.tls_port`` (``require_certificate`` for
mTLS, ``use_identity_as_username`` to take the ACL's username from the certificate).
``acl=`` is the ACL file's text (``systemd/mosquitto/acl`` for the shipped one) and
``passwords=`` its users, hashed into a password file (``use_username_as_clientid`` on the plain
listener binds a client id to its login). Without a ``mosquitto`` binary, ``start()`` raises
:class:`MosquittoNotFound` whose message says how to install it. The pytest fixtures live in ``tests/broker.py``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from provisioning_lab import _children
from provisioning_lab._ports import free_port

__all__ = [
    "MOSQUITTO_MISSING",
    "BrokerStartError",
    "BrokerTls",
    "MosquittoBroker",
    "MosquittoNotFound",
    "find_mosquitto",
    "hash_password",
    "write_password_file",
]

MOSQUITTO_MISSING: Final = (
    "mosquitto not found: install it (Debian/Ubuntu: apt-get install mosquitto mosquitto-clients)"
)
SBIN_DIRS: Final = ("/usr/sbin", "/usr/local/sbin", "/sbin")  # mosquitto lives in sbin, often off a user's PATH
HOST: Final = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS: Final = 10.0  # mosquitto listens within ~20 ms; a loaded CI runner gets slack
STOP_TIMEOUT_SECONDS: Final = 5.0  # SIGTERM grace (mosquitto saves its persistence db, then exits) before SIGKILL
POLL_SECONDS: Final = 0.02  # readiness probe interval
BIND_ATTEMPTS: Final = 3  # a free port found by bind(0) can be taken before mosquitto binds it
PBKDF2_ITERATIONS: Final = 101  # what mosquitto_passwd 2.0 writes ($7$ = PBKDF2-SHA512)


class MosquittoNotFound(RuntimeError):
    """No ``mosquitto`` binary on PATH or in the sbin directories."""


class BrokerStartError(RuntimeError):
    """Mosquitto exited or did not listen in time; the message holds its log."""


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: the CA that signs client certificates, the server's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False  # mTLS: clients must present a certificate signed by ca_file
    use_identity_as_username: bool = False  # mTLS: the certificate's CN is the username the ACL sees


def find_mosquitto() -> str:
    """Path of the ``mosquitto`` binary; :class:`MosquittoNotFound` with the install instruction."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path=os.pathsep.join(SBIN_DIRS))
    if found is None:
        raise MosquittoNotFound(MOSQUITTO_MISSING)
    return found


class MosquittoBroker:
    """A ``mosquitto`` subprocess on 127.0.0.1 with a generated configuration."""

    def __init__(
        self,
        directory: Path,
        *,
        persistence: bool = False,
        allow_anonymous: bool = True,
        passwords: Mapping[str, str] | None = None,
        acl: str | None = None,
        tls: BrokerTls | None = None,
        use_username_as_clientid: bool = False,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.persistence = persistence
        self.allow_anonymous = allow_anonymous
        self.passwords = dict(passwords or {})
        self.acl = acl
        self.tls = tls
        self.use_username_as_clientid = use_username_as_clientid  # plain listener: ACL %c and %u agree
        self.extra_config = tuple(extra_config)
        self.host = HOST
        self._port: int | None = None
        self._tls_port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- configuration ---------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def output_file(self) -> Path:
        """Where mosquitto's stdout/stderr go (errors from before the log file opens)."""
        return self.directory / "mosquitto.out"

    def config_text(self) -> str:
        """The configuration for the current ports."""
        lines = [
            "per_listener_settings false",
            f"allow_anonymous {_flag(self.allow_anonymous)}",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "log_type unsubscribe",
            "connection_messages true",
            f"persistence {_flag(self.persistence)}",
            "set_tcp_nodelay true",  # as docs/mqtt-transport.md advises: Nagle + delayed ACK cost 44 ms a round trip
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # as root, mosquitto otherwise drops to 'mosquitto', who cannot read tmp files
        if self.persistence:
            lines.append(f"persistence_location {self.directory / 'data'}/")
        if self.passwords:
            lines.append(f"password_file {self.directory / 'passwords'}")
        if self.acl is not None:
            lines.append(f"acl_file {self.directory / 'acl'}")
        lines += self.extra_config
        lines += ["", f"listener {self.port} {HOST}"]
        if self.use_username_as_clientid:
            lines.append("use_username_as_clientid true")
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} {HOST}",
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {_flag(self.tls.require_certificate)}",
                f"use_identity_as_username {_flag(self.tls.use_identity_as_username)}",
            ]
        return "\n".join(lines) + "\n"

    def _write_files(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.persistence:
            (self.directory / "data").mkdir(exist_ok=True)
        if self.passwords:
            write_password_file(self.directory / "passwords", self.passwords)
        if self.acl is not None:
            (self.directory / "acl").write_text(self.acl)
        self.config_file.write_text(self.config_text())

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start mosquitto and wait until every listener accepts TCP; BrokerStartError with the log if not."""
        if self._process is not None:
            raise RuntimeError("the broker is already running")
        binary = find_mosquitto()
        fixed_ports = self._port is not None
        for attempt in range(1 if fixed_ports else BIND_ATTEMPTS):
            if not fixed_ports:
                self._port = free_port(HOST)
                self._tls_port = free_port(HOST) if self.tls is not None else None
            self._write_files()
            try:
                self._launch(binary)
            except BrokerStartError:
                if fixed_ports or attempt == BIND_ATTEMPTS - 1 or "Address already in use" not in self.log_text():
                    raise
            else:
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM (mosquitto saves persistence), SIGKILL after ``timeout``; the exit code."""
        process, self._process = self._process, None
        return None if process is None else _children.terminate(process, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash (nothing saved since the last autosave)."""
        process, self._process = self._process, None
        if process is not None:
            _children.kill(process)

    def restart(self, *, kill: bool = False) -> Self:
        """Stop (or kill) and start again on the same ports with the same persistence directory."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses and diagnostics ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the broker has not been started")
        return self._port

    @property
    def tls_port(self) -> int:
        if self._tls_port is None:
            raise RuntimeError("the broker has no TLS listener (or has not been started)")
        return self._tls_port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://{self.host}:{self.tls_port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        """Mosquitto's log file and console output so far (across restarts)."""
        parts = [path.read_text(errors="replace") for path in (self.log_file, self.output_file) if path.exists()]
        return "".join(parts)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MosquittoBroker {self.host}:{self._port} {state} dir={self.directory}>"

    # -- helpers ---------------------------------------------------------------------------------

    def _launch(self, binary: str) -> None:
        with self.output_file.open("ab") as output:
            self._process = subprocess.Popen(  # noqa: S603 - the mosquitto binary found on PATH, our own config
                [binary, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        ports = [self.port] + ([self.tls_port] if self.tls is not None else [])
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            process = self._process
            if process.poll() is not None:
                self._process = None
                raise BrokerStartError(f"mosquitto exited with {process.returncode}; log:\n{self.log_text()}")
            if all(_accepts(self.host, port) for port in ports):
                return
            if time.monotonic() > deadline:
                self.kill()
                silent = f"mosquitto did not listen on {ports} within {STARTUP_TIMEOUT_SECONDS:.0f} s"
                raise BrokerStartError(f"{silent}; log:\n{self.log_text()}")
            time.sleep(POLL_SECONDS)


def write_password_file(path: Path, passwords: Mapping[str, str]) -> None:
    """A mosquitto password file: by ``mosquitto_passwd -b`` when installed, else in its ``$7$`` format.

    ``-b`` puts the password on a command line for a moment: fine for test and demo brokers; on a
    gateway, run ``mosquitto_passwd`` interactively.
    """
    path.unlink(missing_ok=True)
    tool = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path=os.pathsep.join(SBIN_DIRS))
    if tool is None:
        path.write_text("".join(f"{user}:{hash_password(password)}\n" for user, password in passwords.items()))
    else:
        for user, password in passwords.items():
            create = ["-c"] if not path.exists() else []
            command = [tool, *create, "-b", str(path), user, password]
            subprocess.run(command, check=True, capture_output=True)  # noqa: S603 - test and demo brokers only
    path.chmod(0o600)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``$7$101$<salt>$<hash>``: PBKDF2-SHA512 as ``mosquitto_passwd`` 2.0 writes it."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=POLL_SECONDS * 10):
            return True
    except OSError:
        return False


def _flag(value: bool) -> str:
    return "true" if value else "false"
