"""Every error the product raises on purpose, caught by class (never by its message text).

The front ends map them to exit codes: ``BadInput`` -> 2 (one sentence, no traceback),
``RunFailure`` -> 1. The others are domain errors that callers handle by type; those that are the
user's doing subclass ``BadInput``. ``shorten`` cuts the user input a message echoes."""

from __future__ import annotations

from tunekv.engine.errors import shorten

__all__ = ["BadInput", "DoesNotFit", "NoCalibration", "RunFailure", "shorten"]


class BadInput(ValueError):
    """A user error: printed as one sentence, exit code 2."""


class RunFailure(Exception):
    """A failure at run time: a short reason, exit code 1."""


class NoCalibration(BadInput):
    """The simulator has no step-cost calibration for this model on this device (nor a GPU preset
    to estimate it from): calibrate first, or run for real."""


class DoesNotFit(BadInput):
    """A config the engine or the simulator cannot build: its KV pool cannot hold what it must."""
