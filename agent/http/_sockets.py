"""The status server's listening sockets: TCP, the operators' Unix socket, and the share of descriptors for clients."""

from __future__ import annotations

import grp
import logging
import os
import resource
import socket
import stat
from pathlib import Path

__all__ = ["HttpListenError", "fit_to_descriptors", "tcp_socket", "unix_socket"]

log = logging.getLogger("agent.http")


class HttpListenError(OSError):
    """The status endpoint cannot listen (the port is taken, the address is not ours, the socket path is wrong)."""


def tcp_socket(listen: str) -> socket.socket:
    """A non-blocking listening socket on ``host:port``; :class:`HttpListenError` when it cannot be had."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, int(port)), family=family, backlog=128)
    except OSError as exc:
        raise HttpListenError(f"http.listen {host}:{port}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def unix_socket(path: Path, group: str, mode: int) -> socket.socket | None:
    """The operators' socket, mode 0660 in ``group`` when we may give it; None when its folder is missing."""
    if not path.parent.is_dir():
        log.warning(
            "http: no Unix socket at %s: folder %s does not exist (the unit's RuntimeDirectory= makes it); "
            "/status is served over TCP to the token holders only", path, path.parent,
        )  # fmt: skip
        return None
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            if _answers(path):
                raise HttpListenError(f"http.socket {path}: another agent serves on it")
            path.unlink()  # left by an agent that did not stop cleanly
    except FileNotFoundError:
        pass
    except OSError as exc:
        if isinstance(exc, HttpListenError):
            raise
        raise HttpListenError(f"http.socket {path}: {exc.strerror or exc}") from exc
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        _give_to_group(path, group)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise HttpListenError(f"http.socket {path}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def _answers(path: Path) -> bool:
    """Something accepts connections on the socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _give_to_group(path: Path, group: str) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        log.info("http: group %s does not exist; %s keeps the agent's own group", group, path)
        return
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        log.warning("http: cannot give %s to group %s (the agent is not a member of it)", path, group)


def fit_to_descriptors(wanted: int) -> int:
    """At most a quarter of the process's descriptors go to HTTP clients: devices, cloud and journal need theirs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    fitting = wanted if soft == resource.RLIM_INFINITY else min(wanted, max(4, soft // 4))
    if fitting < wanted:
        log.warning(
            "http: serving at most %d connections, not %d: the descriptor limit is %d (raise LimitNOFILE)",
            fitting, wanted, soft,
        )  # fmt: skip
    return fitting
