"""Errors with messages meant for users (the CLI prints them and exits with code 2)."""

from __future__ import annotations

import re
from collections.abc import Callable

_SETTING = re.compile(r"\{\{([a-z_.]+)(?: ([^}]*))?\}\}")


def setting(field: str, value: object | None = None) -> str:
    """A setting named inside a core message (``{{field value}}``), worded by each front end with
    :func:`word_settings`: the CLI as its option (``--label 3``), the GUI as its widget field."""
    return "{{" + field + ("" if value is None else f" {value}") + "}}"


def plain_setting(field: str, value: str | None) -> str:
    """The wording for Python callers: the config field name (``label=3``)."""
    return field if value is None else f"{field}={value}"


def word_settings(message: str, word: Callable[[str, str | None], str] = plain_setting) -> str:
    """``message`` with every :func:`setting` replaced by ``word(field, value)``."""
    return _SETTING.sub(lambda m: word(m.group(1), m.group(2)), str(message))


class DropsemblesError(Exception):
    """Base class of every error whose message is shown to the user as is.

    A message may name settings with :func:`setting`; ``str(error)`` names them as fields, and each
    front end words them its own way with :meth:`in_words`.
    """

    def __init__(self, *args: object) -> None:
        self.template = str(args[0]) if args else ""
        super().__init__(word_settings(self.template), *args[1:])

    def in_words(self, word: Callable[[str, str | None], str]) -> str:
        """The message with its settings worded by ``word(field, value)``."""
        return word_settings(self.template, word)


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
