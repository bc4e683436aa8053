"""The one error type of the emulated API and the constructors of its gateway-style codes.

Every refusal, from signature checks to licence rules, is an :class:`ApiError` carrying the code,
the message and the HTTP status; the HTTP layer renders it in the requested format. Business codes
follow the gateway's pattern (``Missing{Name}``, ``Invalid{Name}``, ``Invalid{Name}.<Reason>``)
because the real service documents none; docs/emulator.md lists every code used.
"""

from __future__ import annotations

__all__ = ["ApiError", "invalid", "missing", "not_found"]


class ApiError(Exception):
    """A request the emulated service refuses, with the status and body fields to answer."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def missing(name: str, label: str | None = None) -> ApiError:
    """``Missing{Name}`` (400): a mandatory parameter (or the header ``label`` names) is absent or empty."""
    what = label if label is not None else f"parameter {name!r}"
    return ApiError(
        f"Missing{name}", f"The input {what} that is mandatory for processing this request is not supplied."
    )


def invalid(name: str, rule: str, reason: str | None = None) -> ApiError:
    """``Invalid{Name}`` or ``Invalid{Name}.{Reason}`` (400) with the rule that was broken."""
    code = f"Invalid{name}" if reason is None else f"Invalid{name}.{reason}"
    return ApiError(code, f"The parameter {name!r} is invalid: {rule}.")


def not_found(name: str) -> ApiError:
    """``Invalid{Name}.NotFound`` (400): the referenced object does not exist in this account."""
    return ApiError(f"Invalid{name}.NotFound", f"The specified {name} does not exist in this account.")
