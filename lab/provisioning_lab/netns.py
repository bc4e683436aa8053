"""A gateway on a host of its own: a network namespace joined to this host by a veth pair (root only).

For the partition tests (tests/integration/test_cluster.py): one agent runs in its own network
namespace and reaches the broker, the emulator and the ledger through the veth pair, so that
its path to the ledger alone can be cut, as a firewall rule or a pulled cable on that host
would cut it, while the other agents keep theirs::

    with NetworkNamespace.create() as host:
        broker = host.forward(broker_port)            # host.address:port -> 127.0.0.1:broker_port
        ledger = host.forward(pg_port, ledger=True)   # host.ledger_address:port -> 127.0.0.1:pg_port
        ...start the agent with launcher ("-m", "provisioning_lab.netns", host.name, "--")...
        host.cut_ledger()    # a blackhole route in the namespace: packets to the ledger vanish
        host.heal_ledger()

The services the tests start listen on 127.0.0.1, which a namespace cannot reach: each one is
relayed by a small TCP forwarder on the host side of the veth pair. The ledger gets an address
of its own on that side, so the cut is one route in the namespace (``ip route add blackhole``):
nothing else the agent talks to is touched, and its packets are dropped silently, as a real
partition drops them (no reset, no refusal).

``python -m provisioning_lab.netns NAME -- run --config FILE`` enters the namespace NAME and
runs the agent there (the process keeps its pid: the tests signal it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Self

__all__ = ["NetnsUnavailable", "NetworkNamespace", "TcpForwarder", "main", "unavailable_reason"]

CLONE_NEWNET: Final = 0x40000000
CHUNK: Final = 65536


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``, or the kernel refuses)."""


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used on this machine, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces are a Linux feature"
    if os.geteuid() != 0:
        return "network namespaces need root (run the partition tests as root, e.g. in the CI container)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing: apt-get install iproute2"
    return None


def _ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", *(("-n", namespace) if namespace else ()), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 - fixed program
    if done.returncode != 0:
        raise NetnsUnavailable(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")


class NetworkNamespace:
    """A network namespace with a veth pair to this host and TCP forwarders to this host's loopback services."""

    def __init__(self, name: str, subnet: int) -> None:
        self.name = name
        self.address = f"10.231.{subnet}.1"  # this host, as the namespace sees it (broker, emulator)
        self.ledger_address = f"10.231.{subnet}.3"  # the ledger, as the namespace sees it (cut alone)
        self.inside = f"10.231.{subnet}.2"  # the namespace's own address
        self._veth = f"pa{subnet}x{os.getpid() % 10000}h"  # at most 11 characters (the kernel allows 15)
        self._peer = self._veth[:-1] + "n"
        self._forwarders: list[TcpForwarder] = []
        self.cut = False

    @classmethod
    def create(cls) -> NetworkNamespace:
        """Make the namespace and its link; :class:`NetnsUnavailable` (everything undone) when it cannot."""
        reason = unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        subnet = random.randrange(1, 250)
        space = cls(f"provisioning-{os.getpid()}-{subnet}", subnet)
        try:
            space._build()
        except BaseException:
            space.close()
            raise
        return space

    def _build(self) -> None:
        peer = self._peer
        _ip("netns", "add", self.name)
        _ip("link", "add", self._veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self.name)
        _ip("addr", "add", f"{self.address}/24", "dev", self._veth)
        _ip("addr", "add", f"{self.ledger_address}/24", "dev", self._veth)
        _ip("link", "set", self._veth, "up")
        _ip("addr", "add", f"{self.inside}/24", "dev", peer, namespace=self.name)
        _ip("link", "set", peer, "up", namespace=self.name)
        _ip("link", "set", "lo", "up", namespace=self.name)

    def forward(self, port: int, *, ledger: bool = False) -> int:
        """Relay a port of this host's loopback into the namespace's view; the port it listens on there."""
        forwarder = TcpForwarder(self.ledger_address if ledger else self.address, port)
        self._forwarders.append(forwarder)
        return forwarder.port

    def cut_ledger(self) -> None:
        """Drop, inside the namespace, every packet to the ledger's address (a partition: no answer at all)."""
        _ip("route", "add", "blackhole", f"{self.ledger_address}/32", namespace=self.name)
        self.cut = True

    def heal_ledger(self) -> None:
        """Give the namespace its path to the ledger back."""
        _ip("route", "del", "blackhole", f"{self.ledger_address}/32", namespace=self.name)
        self.cut = False

    def launcher(self) -> tuple[str, ...]:
        """The interpreter's arguments that run the agent inside the namespace (AgentProcess's ``launcher``)."""
        return ("-m", "provisioning_lab.netns", self.name, "--")

    def close(self) -> None:
        """Stop the forwarders, remove the link and the namespace (best effort: each step on its own)."""
        for forwarder in self._forwarders:
            forwarder.close()
        for args in (("link", "del", self._veth), ("netns", "del", self.name)):
            with contextlib.suppress(NetnsUnavailable):
                _ip(*args)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class TcpForwarder:
    """Accepts on ``host``:(a free port) and relays each connection to 127.0.0.1:``target`` (two threads each)."""

    def __init__(self, host: str, target: int) -> None:
        self.target = target
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"forward-{target}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _enter(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(descriptor, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {name}: {os.strerror(error)}")
    finally:
        os.close(descriptor)


def main(argv: Sequence[str] | None = None) -> int:
    """``NAME -- AGENT ARGS``: enter the namespace, then run the agent in this process."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments:
        print("usage: python -m provisioning_lab.netns NAME -- run --config FILE", file=sys.stderr)
        return 2
    name, rest = arguments[0], arguments[1:]
    _enter(name)
    from agent.cli import main as agent_main

    return int(agent_main(rest[1:] if rest[:1] == ["--"] else rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
