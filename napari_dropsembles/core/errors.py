"""Errors with messages meant for users (the CLI prints them and exits with code 2)."""

from __future__ import annotations


class DropsemblesError(Exception):
    """Base class of every error whose message is shown to the user as is."""


class InputError(DropsemblesError, ValueError):
    """A volume, mask or parameter that cannot be used (wrong shape, empty, NaN, ...)."""


class ConfigError(InputError):
    """A config field with a value it cannot take.

    ``field`` is the dotted field name (``"members"``, ``"finetune.steps"``); ``problem`` says what
    the field needs ("must be an integer from 1 to 64"); ``value`` is what it got. The message names
    the field; the CLI and the GUI reword it with :meth:`worded` in their own terms (a flag, a
    widget label).
    """

    def __init__(self, field: str, problem: str, value: object) -> None:
        self.field, self.problem, self.value = field, problem, value
        super().__init__(self.worded(field))

    def worded(self, name: str) -> str:
        """The message with ``name`` (a flag, a widget label) in place of the field."""
        shown = repr(self.value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"{name} {self.problem}, got {shown}"

    def nested(self, parent: str) -> ConfigError:
        """The same error for the field seen from a config that holds this one as ``parent``."""
        return ConfigError(f"{parent}.{self.field}", self.problem, self.value)


class CheckpointError(DropsemblesError):
    """A checkpoint that is missing, corrupt, truncated or from an incompatible version."""


class Cancelled(DropsemblesError):
    """A long computation stopped because its cancel flag was set."""
