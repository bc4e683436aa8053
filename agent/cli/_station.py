"""The station view (``station/1``, agent.daemon._station) as tables: for ``status`` and ``status --watch``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

__all__ = ["Section", "age", "live_view", "overview", "sections"]

LIGHT_STYLES: Final = {"ok": "green", "waiting": "yellow", "down": "bold red", "off": "dim"}


@dataclass(frozen=True, slots=True)
class Section:
    """One table of the view: title, columns, rows (cells already text)."""

    title: str
    columns: tuple[str, ...]
    rows: list[dict[str, str]]


def age(seconds: float) -> str:
    """``12 s``, ``4 min``, ``2 h 05``: how long ago, at a glance."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d}"


def overview(document: Mapping[str, Any], view: Mapping[str, Any]) -> list[dict[str, str]]:
    """The station's lights and the shift's counts, one ``what``/``value`` row each."""
    lights = view.get("lights") or {}
    shift = view.get("shift") or {}
    since = time.strftime("%H:%M", time.localtime(float(shift.get("since") or 0)))
    rows = [("gateway", str(view.get("gateway_id", "")))]
    rows += [(name, f"{light.get('state', '?')}: {light.get('text', '')}") for name, light in lights.items()]
    rows += [
        ("shift since", since),
        ("licensed", str(shift.get("licensed", 0))),
        ("failed", str(shift.get("failed", 0))),
        ("refused", str(shift.get("refused", 0))),
        ("in flight", str(shift.get("in_flight", 0))),
        ("waiting for the cloud", str(shift.get("waiting_for_cloud", 0))),
        ("reports not yet upstream", str(shift.get("outbox", 0))),
        ("agent up for", age(float(document.get("uptime_s") or 0))),
    ]
    return [{"what": what, "value": value} for what, value in rows]


def sections(view: Mapping[str, Any]) -> list[Section]:
    """Every non-empty table of the view, in screen order."""
    now = float(view.get("now") or time.time())
    found = [
        Section("jig slots", ("slot", "state", "device", "stage", "age"), [
            {"slot": s["slot"], "state": s["state"], "device": s["device_id"], "stage": s["stage"],
             "age": age(now - float(s["since"])) if s.get("since") else ""}
            for s in view.get("slots") or []
        ]),
        Section("devices in flight", ("device", "model", "via", "stage", "age", "attempt"), [
            {"device": d["device_id"], "model": d["model"], "via": d["tid"], "stage": d["stage"],
             "age": age(now - float(d["since"])), "attempt": str(d["attempt_no"])}
            for d in view.get("devices") or []
        ]),
        Section("last licensed", ("at", "device", "model", "licence", "expires", "stage"), [
            {"at": time.strftime("%H:%M:%S", time.localtime(float(r["at"]))), "device": r["device_id"],
             "model": r["model"], "licence": r["sdk_device_id"], "expires": r["expired_day"], "stage": r["stage"]}
            for r in view.get("recent") or []
        ]),
        Section("failures this shift", ("count", "what", "what to do"), [
            {"count": str(f["count"]), "what": f["what"], "what to do": f["what_to_do"]}
            for f in view.get("failures") or []
        ]),
        Section("latest problems", ("at", "problem"), [
            {"at": p["at"], "problem": p["text"]} for p in view.get("problems") or []
        ]),
    ]  # fmt: skip
    return [section for section in found if section.rows]


def live_view(view: Mapping[str, Any] | None, error: str = "", *, rows_per_table: int = 12) -> RenderableType:
    """What ``status --watch`` draws: lights and counts, then the tables (each cut to ``rows_per_table``)."""
    if view is None:
        return Text(f"no answer from the agent: {error}\n(still trying every second; Ctrl-C leaves)", style="bold red")
    parts: list[RenderableType] = [_lights(view)]
    for section in sections(view):
        table = Table(title=section.title, title_justify="left", expand=True)
        for column in section.columns:
            table.add_column(column, overflow="ellipsis", no_wrap=column != "what to do")
        for row in section.rows[:rows_per_table]:
            table.add_row(*(escape(row[column]) for column in section.columns))
        if len(section.rows) > rows_per_table:
            table.caption = f"{len(section.rows) - rows_per_table} more"
        parts.append(table)
    if error:
        parts.append(Text(f"last refresh failed: {error}", style="yellow"))
    return Group(*parts)


def _lights(view: Mapping[str, Any]) -> RenderableType:
    line = Text()
    line.append(f"{view.get('gateway_id', '')}  ", style="bold")
    for name, light in (view.get("lights") or {}).items():
        state = str(light.get("state", "off"))
        line.append("● ", style=LIGHT_STYLES.get(state, "dim"))
        line.append(f"{name}: {light.get('text', '')}  ")
    shift = view.get("shift") or {}
    since = time.strftime("%H:%M", time.localtime(float(shift.get("since") or 0)))
    line.append(
        f"\nshift since {since}: {shift.get('licensed', 0)} licensed · {shift.get('failed', 0)} failed · "
        f"{shift.get('refused', 0)} refused · {shift.get('in_flight', 0)} in flight · "
        f"{shift.get('waiting_for_cloud', 0)} waiting for the cloud · outbox {shift.get('outbox', 0)}"
    )
    return line
