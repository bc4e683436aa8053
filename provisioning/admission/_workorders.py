"""Work orders: the MES's list of devices it expects for one production order (docs/admission.md).

A work order is one CSV file (UTF-8, a BOM is allowed, ``#`` starts a comment line) with a
header naming its columns, in any order:

    order,model,device_id,device_key,ceiling,topic_id

``order``, ``model`` and ``device_id`` are required; ``device_key`` (the device's Ed25519
public key, base64), ``ceiling`` (keys the order may use; default: one per device listed) and
``topic_id`` (the MQTT topic id, i.e. broker login, the device registers from when it is not its
device_id) are optional; other columns are ignored. Every row carries the same order, model and
ceiling. Parsing is strict: the first problem is a :class:`WorkOrderError` naming the file, the
line and the column, never quoting the file's text (the folder's writer is not the agent's
reader: a file linked or copied there may hold anything, and errors reach the log and /status).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, NoReturn

from provisioning.admission._signature import decode_public_key
from provisioning.protocol import is_valid_tid

__all__ = ["MAX_DEVICES", "MAX_FILE_BYTES", "WorkOrder", "WorkOrderBook", "WorkOrderError", "parse_work_order"]

MAX_FILE_BYTES: Final = 16 * 1024 * 1024  # a 200k-device order with keys is ~12 MB; anything bigger is not one
MAX_DEVICES: Final = 200_000
MAX_CEILING: Final = 1_000_000
MAX_ID_CHARS: Final = 64  # as the protocol's device_id
REQUIRED_COLUMNS: Final = ("order", "model", "device_id")


class WorkOrderError(ValueError):
    """A work-order file that cannot be used; names the file and the line."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason = source, line, reason


@dataclass(frozen=True, slots=True)
class WorkOrder:
    """One production order: the devices the MES expects and how many keys it may use."""

    order_id: str
    model: str
    ceiling: int
    devices: Mapping[str, bytes]  # device_id -> its Ed25519 public key (b"" when the order gives none)
    source: str  # the file it came from
    topic_ids: Mapping[str, str] = field(default_factory=dict)  # device_id -> the login it registers from

    def topic_id_of(self, device_id: str) -> str:
        """The topic id (broker login) the order binds a device to: its own device_id unless mapped."""
        return self.topic_ids.get(device_id, device_id)


def parse_work_order(text: str, source: str) -> WorkOrder:
    """Parse one work-order file's text; ``source`` names it in errors."""
    if len(text) > MAX_FILE_BYTES:
        raise WorkOrderError(source, 1, f"file is larger than {MAX_FILE_BYTES} bytes")
    rows = _rows(text.removeprefix("\ufeff"), source)
    try:
        header_line, header = next(rows)
    except StopIteration:
        raise WorkOrderError(source, 1, "file is empty (a header line is required)") from None
    columns = {name.strip().lower(): index for index, name in enumerate(header)}
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:  # the header's own text is not quoted: it may be anything but a header
        raise WorkOrderError(source, header_line, f"header lacks column(s) {', '.join(missing)}")
    order_id = model = ceiling_text = None
    devices: dict[str, bytes] = {}
    topic_ids: dict[str, str] = {}
    first_seen: dict[str, int] = {}  # device_id -> the line that lists it
    for line, row in rows:
        cell = _Cells(source, line, row, columns)
        order_id = cell.same("order", order_id)
        model = cell.same("model", model)
        ceiling_text = cell.same("ceiling", ceiling_text, required=False)
        if ceiling_text and not (ceiling_text.isdigit() and 1 <= int(ceiling_text) <= MAX_CEILING):
            cell.fail(f"column ceiling must be a whole number from 1 to {MAX_CEILING}")
        device_id = cell.get("device_id")
        if not device_id:
            cell.fail("column device_id is empty")
        if len(device_id) > MAX_ID_CHARS:
            cell.fail(f"column device_id is {len(device_id)} characters; at most {MAX_ID_CHARS}")
        if device_id in first_seen:
            cell.fail(f"column device_id: the device is already listed on line {first_seen[device_id]}")
        first_seen[device_id] = line
        key_text = cell.get("device_key")
        try:
            devices[device_id] = decode_public_key(key_text) if key_text else b""
        except ValueError as exc:
            cell.fail(f"column device_key {exc}")
        if topic_id := cell.get("topic_id"):
            if not is_valid_tid(topic_id):
                cell.fail(
                    "column topic_id is not a topic id (1 to 64 of A-Z a-z 0-9 . _ - : ~ @ $, not starting with $)"
                )
            topic_ids[device_id] = topic_id
        if len(devices) > MAX_DEVICES:
            cell.fail(f"more than {MAX_DEVICES} devices in one order")
    if order_id is None or model is None:
        raise WorkOrderError(source, header_line, "no device rows after the header")
    ceiling = int(ceiling_text) if ceiling_text else len(devices)
    return WorkOrder(order_id, model, ceiling, devices, source, topic_ids)


class WorkOrderBook:
    """The work orders in force, with an index from device id to the orders listing it."""

    def __init__(self, orders: Iterable[WorkOrder] = ()) -> None:
        self.orders: dict[str, WorkOrder] = {}
        self._index: dict[str, list[WorkOrder]] = {}
        for order in sorted(orders, key=lambda o: o.order_id):
            if order.order_id in self.orders:
                raise ValueError(
                    f"order {order.order_id!r} given twice ({order.source}, {self.orders[order.order_id].source})"
                )
            self.orders[order.order_id] = order
            for device_id in order.devices:
                self._index.setdefault(device_id, []).append(order)

    def listing(self, device_id: str) -> list[WorkOrder]:
        """Every order that lists ``device_id`` (any model), by order id."""
        return list(self._index.get(device_id, ()))

    def __len__(self) -> int:
        return len(self.orders)


class _Cells:
    """One data row's cells by column name, every failure naming the file and the line."""

    def __init__(self, source: str, line: int, row: list[str], columns: dict[str, int]) -> None:
        self.source, self.line, self.row, self.columns = source, line, row, columns

    def fail(self, reason: str) -> NoReturn:
        raise WorkOrderError(self.source, self.line, reason)

    def get(self, name: str) -> str:
        index = self.columns.get(name)
        return self.row[index].strip() if index is not None and index < len(self.row) else ""

    def same(self, name: str, before: str | None, *, required: bool = True) -> str:
        value = self.get(name)
        if required and not value:
            self.fail(f"column {name} is empty")
        if len(value) > MAX_ID_CHARS:
            self.fail(f"column {name} is {len(value)} characters; at most {MAX_ID_CHARS}")
        if before is not None and value != before:
            self.fail(f"column {name} differs from the rows above (one order, model and ceiling per file)")
        return value


def _rows(text: str, source: str) -> Iterator[tuple[int, list[str]]]:
    """Non-empty CSV rows with their line numbers; comment lines are blanked so numbers stay true."""
    lines = ("\n" if line.lstrip().startswith("#") else line for line in text.splitlines(keepends=True))
    reader = csv.reader(lines, strict=True)
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                yield reader.line_num, row
    except csv.Error as exc:
        raise WorkOrderError(source, reader.line_num, f"not valid CSV ({exc})") from None
