"""Errors with messages meant for users (the CLI prints them and exits with code 2)."""


class DropsemblesError(Exception):
    """Base class of every error whose message is shown to the user as is."""


class InputError(DropsemblesError, ValueError):
    """A volume, mask or parameter that cannot be used (wrong shape, empty, NaN, ...)."""


class CheckpointError(DropsemblesError):
    """A checkpoint that is missing, corrupt, truncated or from an incompatible version."""


class Cancelled(DropsemblesError):
    """A long computation stopped because its cancel flag was set."""
