"""Exceptions raised by pgreflect, mapped from the SQLSTATEs its SQL functions raise (class PR)."""

from __future__ import annotations

import psycopg


class PgreflectError(Exception):
    """Base class: a clear, user-facing error."""


class InvalidInput(PgreflectError):
    """PR001: bad argument; nothing was written."""


class StaleLease(PgreflectError):
    """PR002: the request is no longer running under this lease token."""


class UnknownModel(PgreflectError):
    """PR003: no such model version, or none active."""


class MissingKey(PgreflectError):
    """PR004: no encryption key loaded for the key id needed."""


class NotFound(PgreflectError):
    """PR005: no such request (or not the caller's)."""


class AppendOnly(PgreflectError):
    """PR006: an audit table cannot be changed."""


class QueueFull(PgreflectError):
    """PR007: the model version has max_queued_per_version requests waiting; nothing was written, retry later."""


class UnsafeLogging(PgreflectError):
    """The server would log bind parameters, and so the key and prompts."""


_BY_SQLSTATE: dict[str, type[PgreflectError]] = {
    "PR001": InvalidInput,
    "PR002": StaleLease,
    "PR003": UnknownModel,
    "PR004": MissingKey,
    "PR005": NotFound,
    "PR006": AppendOnly,
    "PR007": QueueFull,
}


def translate(exc: psycopg.Error) -> Exception:
    """The pgreflect exception for a database error, or the error itself when it is not one of ours."""
    cls = _BY_SQLSTATE.get(exc.sqlstate or "")
    if cls is None:
        return exc
    diag = exc.diag
    message = diag.message_primary or str(exc)
    if diag.message_hint:
        message += f" (hint: {diag.message_hint})"
    return cls(message)
