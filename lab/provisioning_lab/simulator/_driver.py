"""The loop every simulated device runs around its ``DeviceMachine``, whatever carries its messages.

A transport (MQTT in ``_device``, a serial link in ``_serial``) subclasses :class:`MachineDriver`,
puts each message from the agent into ``_inbox``, keeps ``_timer_at`` for ``SetTimer`` and
performs the other commands; :meth:`MachineDriver._drive` does the rest.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import deque

from provisioning_lab.simulator._machine import Command, DeviceMachine, Stop
from provisioning_lab.simulator._spec import DeviceSpec, Timing

__all__ = ["MachineDriver"]


class MachineDriver(abc.ABC):
    """Feeds a device's machine its messages and timer and performs what it answers, until ``Stop``."""

    def __init__(self, spec: DeviceSpec, timing: Timing) -> None:
        self.spec = spec
        self.machine = DeviceMachine(spec, timing)
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._timer_at: float | None = None  # loop time the machine's timer fires, None: no timer

    @abc.abstractmethod
    async def _perform(self, command: Command) -> list[Command]:
        """Carry out one command (never ``Stop``); returns the machine's reaction, if any."""

    async def _drive(self) -> None:
        """Start the machine and run it until it says ``Stop``."""
        commands: deque[Command] = deque(self.machine.start(time.time()))
        while True:
            while commands:
                command = commands.popleft()
                if isinstance(command, Stop):
                    return
                commands.extend(await self._perform(command))
            commands.extend(await self._next_event())

    async def _next_event(self) -> list[Command]:
        loop = asyncio.get_running_loop()
        timeout = None if self._timer_at is None else max(0.0, self._timer_at - loop.time())
        try:
            async with asyncio.timeout(timeout):
                payload = await self._inbox.get()
        except TimeoutError:
            self._timer_at = None
            return self.machine.timer_fired(time.time())
        return self.machine.receive(payload, time.time())
