"""Errors a user can act on. Their message is shown as is; anything else becomes an apology + error id."""

from __future__ import annotations

import uuid


def new_error_id() -> str:
    """A short id that ties the apology a user sees to the traceback in the log."""
    return uuid.uuid4().hex[:8]


class UserFacingError(Exception):
    """Bad input or a fixable setup problem; `str(exc)` is the message to show."""


class InputError(UserFacingError):
    """The question itself is unusable (empty, too long, binary)."""


class ModelNotFound(UserFacingError):
    """The configured GGUF model file is missing or unreadable."""


class IndexError_(UserFacingError):
    """A domain index is missing, corrupt or stale and could not be rebuilt."""


class BackendUnavailable(UserFacingError):
    """The inference backend (e.g. a remote server) cannot be reached."""
