"""Errors a user can cause, reported in one sentence that names the file or key and the fix.

The CLI catches :class:`TlmultiError` and prints its message without a traceback, exiting with
status 2. Anything else is a bug and keeps its traceback.
"""


class TlmultiError(Exception):
    """Base class for user-facing errors: the message is the whole report."""


class RecipeError(TlmultiError):
    """A recipe key is unknown, has the wrong type, or an override is malformed."""


class DataError(TlmultiError):
    """Input data cannot be read: missing file, unreadable image, empty class, bad manifest."""


class RegistryError(TlmultiError):
    """An unknown task, backbone or dataset name."""


class MissingWeightsError(TlmultiError):
    """Pretrained weights are not on this machine and cannot be downloaded."""


class RunError(TlmultiError):
    """A run folder is missing, incomplete, or would be overwritten."""


class DiskFullError(RunError):
    """A disk has no room for what tlmulti writes (a run folder, an export, a cache entry,
    converted weights): the message names the disk, the space needed and what to do."""
