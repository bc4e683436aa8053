"""The error trees drawn in the docs and in the error modules' docstrings are the trees the code has.

Each drawing is parsed (a name per line, its depth from the box-drawing prefix) and compared,
edge by edge, with the classes: every documented class exists with the documented parent, and
every class under the root is documented.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

from agent.http import _errors as http_errors
from agent.mqtt import _errors as mqtt_errors
from provisioning.cloudauth import _errors as cloudauth_errors

DOCS = Path(__file__).parents[2] / "docs"
_LINE = re.compile(r"^(?P<prefix>(?:[│ ]   |[├└]── )*)(?P<name>[A-Z]\w*)(?:\s|$)")


def drawn_tree(text: str, root: str) -> dict[str, str | None]:
    """``{class name: parent name}`` of the drawing that starts with ``root`` in ``text``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(root + " ") or line.strip() == root)
    indent = len(lines[start]) - len(lines[start].lstrip())
    tree: dict[str, str | None] = {}
    stack: list[str] = []
    for line in lines[start:]:
        match = _LINE.match(line[indent:])
        if match is None or (stack and not match.group("prefix")):
            break  # the drawing ended: a blank line, prose, or another root
        depth = len(match.group("prefix")) // 4
        del stack[depth:]
        tree[match.group("name")] = stack[-1] if stack else None
        stack.append(match.group("name"))
    return tree


def class_tree(module: ModuleType, root: type[Exception]) -> dict[str, str | None]:
    """``{class name: parent name}`` of ``root`` and every subclass of it defined in ``module``."""
    tree: dict[str, str | None] = {root.__name__: None}
    pending = [root]
    while pending:
        parent = pending.pop()
        for child in parent.__subclasses__():
            if child.__module__ == module.__name__:
                tree[child.__name__] = parent.__name__
                pending.append(child)
    return tree


TREES = [
    pytest.param(cloudauth_errors, cloudauth_errors.CloudauthError, "cloudauth-client.md", id="cloudauth"),
    pytest.param(http_errors, http_errors.HttpError, "cloudauth-client.md", id="http"),
    pytest.param(mqtt_errors, mqtt_errors.MqttError, None, id="mqtt"),
]


@pytest.mark.parametrize(("module", "root", "page"), TREES)
def test_the_docstring_draws_the_tree_the_code_has(module: ModuleType, root: type[Exception], page: str) -> None:
    assert module.__doc__ is not None
    assert drawn_tree(module.__doc__, root.__name__) == class_tree(module, root)


@pytest.mark.parametrize(("module", "root", "page"), [p for p in TREES if p.values[2] is not None])
def test_the_docs_draw_the_tree_the_code_has(module: ModuleType, root: type[Exception], page: str) -> None:
    assert drawn_tree((DOCS / page).read_text(encoding="utf-8"), root.__name__) == class_tree(module, root)


@pytest.mark.parametrize(
    ("not_sent", "maybe_processed", "timed_out", "half"),
    [
        (cloudauth_errors.ConnectError, cloudauth_errors.AmbiguousRequestError, cloudauth_errors.RequestTimeout,
         cloudauth_errors.RetryableError),
        (http_errors.ConnectFailed, http_errors.AnswerLost, http_errors.AnswerTimeout, http_errors.HttpRetryableError),
    ],
)  # fmt: skip
def test_not_sent_maybe_processed_and_timed_out_are_siblings(
    not_sent: type[Exception], maybe_processed: type[Exception], timed_out: type[Exception], half: type[Exception]
) -> None:
    """None of them is under another, so ``except`` on one never catches a different meaning."""
    kinds = (not_sent, maybe_processed, timed_out)
    assert all(kind.__bases__ == (half,) for kind in kinds)
    assert half.retryable is True  # type: ignore[attr-defined]


def test_a_parser_that_reads_nothing_would_fail() -> None:
    """The parser finds a tree's edges (so the comparisons above are not of two empty dicts)."""
    drawing = "Root    text\n├── A     x\n│   └── B\n└── C\n"
    assert drawn_tree(drawing, "Root") == {"Root": None, "A": "Root", "B": "A", "C": "Root"}
