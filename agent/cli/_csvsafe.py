"""CSV a spreadsheet opens as data only: no cell a device or an MES wrote can run as a formula.

Device fields (``hardware_id``, ``device_id``, ...) are chosen by whoever runs the firmware. A cell
that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return, which some spreadsheets
skip before looking) is a formula to Excel, LibreOffice and Google Sheets: ``=HYPERLINK(...)`` can
send the sheet's other cells anywhere when clicked. As OWASP's "CSV Injection" advises, such a cell
is written with a leading ``'`` (shown as text, the quote itself hidden by the spreadsheet); the
one CSV writer (``agent.cli._output.write_csv``) quotes every cell so that a semicolon-separated
locale cannot split one cell into two.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["FORMULA_TRIGGERS", "neutralise"]

FORMULA_TRIGGERS: Final = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would read as a formula; else as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value
