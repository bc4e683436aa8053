"""docs/configuration.md lists every key with its range and default exactly as the schema declares them."""

from __future__ import annotations

from tests.config_reference import DOC, TABLES, begin, render, table


def test_the_key_reference_matches_the_schema() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert render(text) == text, "docs/configuration.md is stale: run `make docs` and commit the result"


def test_the_reference_rows_say_range_and_default() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert all(begin(name) in text for name in TABLES)
    assert "| `mqtt.keepalive_s` | an integer, 1..65535 | `30` |" in table(TABLES["agent.toml"], environment=True)
    assert "| `sealing.required` | true or false | `true` |" in table(TABLES["hardware profile"], environment=False)
