"""weightcodec: shrink trained PyTorch models into one real, small file, and restore them."""

from .errors import CorruptFileError, DataError, EncodeError, FormatError, WeightcodecError

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "WeightcodecError",
    "FormatError",
    "CorruptFileError",
    "EncodeError",
    "DataError",
]
