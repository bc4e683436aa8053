"""What an HTTP exchange gives back: the answer's status, headers (every value kept) and body."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

__all__ = ["Headers", "HttpResponse"]


class Headers(Mapping[str, str]):
    """Header fields by lowercase name; a repeated field reads as its values joined by ``", "`` (RFC 9110 5.3).

    :meth:`get_list` gives every value of a field as sent, in order.
    """

    __slots__ = ("_fields", "_joined")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields = [(name.lower(), value) for name, value in fields]
        joined: dict[str, str] = {}
        for name, value in self._fields:
            joined[name] = f"{joined[name]}, {value}" if name in joined else value
        self._joined = joined

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        """From h11's (lowercase name, value) byte pairs."""
        return cls((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw)

    def get_list(self, name: str) -> list[str]:
        """Every value of ``name`` (case-insensitive), in the order received."""
        wanted = name.lower()
        return [value for field, value in self._fields if field == wanted]

    def __getitem__(self, name: str) -> str:
        return self._joined[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined

    def __iter__(self) -> Iterator[str]:
        return iter(self._joined)

    def __len__(self) -> int:
        return len(self._joined)

    def __repr__(self) -> str:
        return f"Headers({sorted(self._joined)!r})"  # names only: a value may be a credential


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """Status, headers and body of one answer."""

    status: int
    headers: Headers
    body: bytes
