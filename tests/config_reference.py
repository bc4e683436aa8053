"""The key reference tables of docs/configuration.md, generated from the declared schemas.

``python -m tests.config_reference`` (``make docs``) rewrites the tables in place;
tests/unit/test_configuration_doc.py fails when they differ from the schema. A key's meaning is
the comment its declaration carries (on its line, else the comment lines just above it).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any, Final, get_type_hints

from agent.config import ENV_PREFIX, AgentConfig
from provisioning.profiles import ProfileFile
from provisioning.schema import Key, keys

DOC: Final = Path(__file__).parents[1] / "docs" / "configuration.md"
TABLES: Final = {"agent.toml": AgentConfig, "hardware profile": ProfileFile}


def begin(name: str) -> str:
    """The marker line before a generated table."""
    return f"<!-- generated from the schema: {name} keys (make docs); do not edit by hand -->"


END: Final = "<!-- end of generated table -->"


def table(section: type[Any], *, environment: bool) -> str:
    """One Markdown table: every key with what it takes, its default and its meaning."""
    meanings = _meanings(section)
    header = "| key | takes | default | meaning |\n|---|---|---|---|\n"
    rows = []
    for key in keys(section):
        takes = _takes(key)
        default = "**required**" if key.required else f"`{key.default}`"
        meaning = meanings.get(key.name, "").rstrip(".")
        if environment:
            meaning += f"{'. ' if meaning else ''}Env: `{ENV_PREFIX}{key.name.replace('.', '_').upper()}`"
        rows.append(f"| `{key.name}` | {takes} | {default} | {_cell(meaning)} |")
    return header + "\n".join(rows) + "\n"


def render(text: str) -> str:
    """``text`` (the document) with every generated table replaced by a fresh one."""
    for name, section in TABLES.items():
        start, end = text.index(begin(name)), text.index(END, text.index(begin(name)))
        fresh = table(section, environment=section is AgentConfig)
        text = text[:start] + begin(name) + "\n\n" + fresh + "\n" + text[end:]
    return text


def _takes(key: Key) -> str:
    kind = key.kind.replace("'", '"')
    return f"{kind}, {key.rule}" if key.rule else kind


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _meanings(section: type[Any], prefix: str = "") -> dict[str, str]:
    """Each key's comment in its declaration, tables walked as :func:`keys` walks them."""
    source = textwrap.dedent(inspect.getsource(section))
    lines = source.splitlines()
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    found: dict[str, str] = {}
    hints = get_type_hints(section, include_extras=True)
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        trailing = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        above, number = [], node.lineno - 1
        while number in comments and lines[number - 1].strip().startswith("#"):
            above.insert(0, comments[number])
            number -= 1
        found[prefix + name] = " ".join(trailing or above)
        kind = getattr(hints[name], "__origin__", hints[name])
        if dataclasses.is_dataclass(kind):
            found |= _meanings(kind, f"{prefix}{name}.")  # type: ignore[arg-type]
    return found


def main() -> int:
    """Rewrite the tables of docs/configuration.md."""
    DOC.write_text(render(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"{DOC}: key tables regenerated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
