"""The errors a data reader raises: a data set missing where the config says, or a file
that is there but cannot be read."""

from __future__ import annotations




class DatasetNotFound(FileNotFoundError):
    """A data set is not on disk where the config says; the message says what to put where."""


class DataError(ValueError):
    """A data file that is there but cannot be read or does not fit (corrupt, truncated,
    wrong shape); the message names the file and the fix.  The training script reports it
    as one line with exit code 2."""
