"""The serial options of ``provisioning-lab simulate``: a jig of paced ptys, or pyserial URLs."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from provisioning.serial import DEFAULT_BAUDRATE
from provisioning_lab.simulator._fleet import fleet_specs
from provisioning_lab.simulator._jig import DEFAULT_PREFIX, Noise, SerialJig
from provisioning_lab.simulator._serial import PortQueue, SerialPort, UrlPort, queue_specs

__all__ = ["DEFAULT_SERIAL_MODEL", "add_serial_arguments", "serial_queues", "wants_serial"]

DEFAULT_SERIAL_MODEL: Final = "gate-controller-g2"  # hardware-profiles/gate-controller-g2.toml lists serial
_NOISE_KINDS: Final = ("flip", "drop", "dup", "cut")


def add_serial_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the serial options to ``simulate``."""
    group = parser.add_argument_group("serial devices (docs/simulator.md, 'Serial devices')")
    group.add_argument(
        "--serial-dir",
        type=Path,
        metavar="DIR",
        help="make a jig of ptys linked as DIR/port-01 ... (point the agent's [serial] ports at DIR/port-*)",
    )
    group.add_argument(
        "--serial-ports", type=_count, default=4, metavar="N", help="ports of the jig (default %(default)s)"
    )
    group.add_argument(
        "--serial-url",
        action="append",
        default=[],
        metavar="URL",
        help="also a port the devices open with pyserial (a device path or socket://...); repeatable",
    )
    group.add_argument(
        "--serial-devices",
        type=_count,
        metavar="N",
        help="serial devices, dealt round robin over the ports and provisioned one after another on each "
        "(default: one per port)",
    )
    group.add_argument(
        "--serial-model", default=DEFAULT_SERIAL_MODEL, help="model of the serial devices (default %(default)s)"
    )
    group.add_argument(
        "--serial-id-prefix", default="SER", help="serial device ids are PREFIX-00000... (default %(default)s)"
    )
    group.add_argument(
        "--baudrate",
        type=_count,
        default=DEFAULT_BAUDRATE,
        metavar="BAUD",
        help="the jig paces its ports like a UART at BAUD 8N1, both ways; 0: no pacing (default %(default)s)",
    )
    group.add_argument(
        "--noise",
        type=_noise,
        default=Noise(),
        metavar="KIND=RATE,...",
        help="damage the jig's lines: flip, drop, dup (per byte), cut (per frame), garbage (idle garbage, =1)",
    )
    group.add_argument("--replug", action="store_true", help="unplug and replug a jig port between two devices")


def wants_serial(args: argparse.Namespace) -> bool:
    """Serial devices were asked for."""
    return args.serial_dir is not None or bool(args.serial_url)


@contextlib.contextmanager
def serial_queues(args: argparse.Namespace) -> Iterator[list[PortQueue]]:
    """The ports the options ask for, with their devices; the jig (if any) is removed afterwards."""
    with contextlib.ExitStack() as stack:
        ports: list[SerialPort] = []
        if args.serial_dir is not None:
            jig = stack.enter_context(
                SerialJig(args.serial_dir, args.serial_ports, baudrate=args.baudrate, noise=args.noise)
            )
            ports += jig.ports
        for url in args.serial_url:
            port = UrlPort(url, args.baudrate or DEFAULT_BAUDRATE)
            stack.callback(port.close)
            ports.append(port)
        if not ports:
            yield []
            return
        count = len(ports) if args.serial_devices is None else args.serial_devices
        specs = fleet_specs(count, model=args.serial_model, id_prefix=args.serial_id_prefix, seal=args.seal)
        yield [q for q in queue_specs(ports, specs, replug=args.replug and args.serial_dir is not None) if q.specs]


def describe(args: argparse.Namespace) -> str:
    """One line on where the serial devices are."""
    where = []
    if args.serial_dir is not None:
        pace = f"{args.baudrate} baud" if args.baudrate else "unpaced"
        where.append(f"{args.serial_ports} jig ports {args.serial_dir}/{DEFAULT_PREFIX}* ({pace})")
    where += args.serial_url
    return ", ".join(where)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return int(text)


def _noise(text: str) -> Noise:
    rates: dict[str, float] = {}
    garbage = False
    for item in filter(None, text.split(",")):
        kind, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not sep or not 0.0 <= number <= 1.0:
            raise argparse.ArgumentTypeError(f"expected KIND=RATE with RATE in 0..1, not {item!r}")
        if kind == "garbage":
            garbage = number > 0
        elif kind in _NOISE_KINDS:
            rates[kind] = number
        else:
            raise argparse.ArgumentTypeError(f"unknown noise {kind!r}: one of {', '.join(_NOISE_KINDS)}, garbage")
    try:
        return Noise(idle_garbage=garbage, **rates)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
