"""The API key, in an object that never shows it: not in reprs, not in tracebacks rendered with locals."""

from __future__ import annotations

__all__ = ["Secret", "redacted_str"]


class Secret:
    """A string that only ``reveal()`` gives back; its repr and str are redacted."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str:
        raise TypeError("a Secret is not pickled: it would write the key out")


class _RedactedStr(str):
    """The key as the header value aiohttp needs (a str), whose repr never shows it.

    aiohttp copies header values into its own multidicts, which stand as locals in its frames: a
    traceback rendered with locals (Sentry's default) prints their reprs, and this repr is redacted.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


def redacted_str(secret: Secret) -> str:
    """The secret as a ``str`` whose ``repr`` is redacted, for the one place that sends it."""
    return _RedactedStr(secret.reveal())
