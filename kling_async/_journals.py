"""Which batch journal a ``journal=`` argument names: an SQLite file, a PostgreSQL URL, or one given as it is.

Above both implementations, so that neither imports the other (PostgreSQL's is an optional extra).
"""

from __future__ import annotations

import os
import re

from ._clock import Clock
from ._errors import JournalError
from ._journal import BatchJournal, Journal, SQLiteJournal

__all__ = ["open_journal", "postgres_url"]

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


def postgres_url(spec: object) -> str | None:
    """``spec`` when it is a ``postgresql://`` (or ``postgres://``) URL, else None."""
    if isinstance(spec, str):
        url = _URL.match(spec)
        if url is not None and url[1].lower() in _POSTGRES_SCHEMES:
            return spec
    return None


def open_journal(
    spec: str | os.PathLike[str] | Journal | BatchJournal, *, clock: Clock | None = None
) -> BatchJournal:
    """The batch journal that ``spec`` names, not yet opened (use it in ``async with``).

    Args:
        spec: an SQLite file path; a ``postgresql://`` URL (a journal that many workers share, with the
            ``postgres`` extra installed); an open ``Journal`` (written through, flushed on exit, not
            closed); or a ``BatchJournal``, returned as it is.
        clock: for the timer and timestamps of a journal made here.

    Raises:
        JournalError: ``spec`` is a URL of another scheme, or a PostgreSQL URL without psycopg installed
            (the message shows the scheme only, since a URL may hold a password).
    """
    if isinstance(spec, Journal):
        return SQLiteJournal(spec, clock=clock)
    if isinstance(spec, str | os.PathLike):
        path = os.fspath(spec)
        url = _URL.match(path)
        if postgres_url(path) is not None:
            try:
                from ._journal_pg import PostgresJournal  # psycopg is an optional extra
            except ImportError as exc:
                raise JournalError(f"{exc}", path=f"{url[1] if url else 'postgresql'}://...") from None
            return PostgresJournal(path, clock=clock)
        if url is not None:
            raise JournalError(
                "a URL; only SQLite journal files and postgresql:// URLs are supported",
                path=f"{url[1]}://...",
            )
        return SQLiteJournal(path, clock=clock)
    return spec
