"""Errors a user can cause. The CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations


class DiscdistillError(Exception):
    """Base class: the message must say what went wrong and what to do about it."""


class ConfigError(DiscdistillError):
    """A configuration value is missing, malformed or out of range."""


class DomainNotFoundError(DiscdistillError):
    """The requested domain is not provided by any installed plugin."""


class PluginError(DiscdistillError):
    """A plugin failed while being loaded or asked for its domains."""


class CheckpointError(DiscdistillError):
    """A checkpoint is missing, truncated, corrupt, or from an incompatible version."""


class DataError(DiscdistillError):
    """Input data is missing, empty, unreadable or malformed."""


class ModelMismatchError(DiscdistillError):
    """A model does not fit the domain (vocabulary size, sequence length, mask id)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's files are missing, truncated or unparsable (an older kept one may still be good)."""


class StorageError(DiscdistillError):
    """An output cannot be written: the directory is not writable or the disk is full."""


class NumericalError(DiscdistillError):
    """Training produced non-finite losses for too many consecutive steps."""


class RunInUseError(DiscdistillError):
    """Another process is writing the same run directory."""
