"""Exceptions raised by weightcodec.

Every error the toolkit raises on purpose derives from :class:`WeightcodecError`, so a
caller (and the CLI) can tell a user mistake or a bad file from a bug.
"""

__all__ = ["WeightcodecError", "FormatError", "CorruptFileError", "MemoryBudgetError", "EncodeError", "DataError"]


class WeightcodecError(Exception):
    """Base class of all weightcodec errors."""


class FormatError(WeightcodecError):
    """The file is not a .wcz file, or uses a format version or codec this reader does not know."""


class CorruptFileError(FormatError):
    """The file is a .wcz file but is damaged: truncated, a checksum mismatch, inconsistent lengths."""


class MemoryBudgetError(WeightcodecError):
    """Decoding a file would need more memory than its budget (``--max-memory`` / ``max_bytes``)."""


class EncodeError(WeightcodecError):
    """The input cannot be encoded with the requested codec and parameters."""


class DataError(WeightcodecError):
    """A data set (MNIST) cannot be found, downloaded or verified."""
