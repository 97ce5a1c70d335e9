"""Errors of the training module that more than one of its files raises."""

from __future__ import annotations

from bot.errors import UserFacingError


class TrainingError(UserFacingError):
    """Training cannot go on; the message says why and what to do."""
