"""weightcodec: shrink trained PyTorch models into one real, small file, and restore them.

::

    import weightcodec
    weightcodec.compress(model, "recipe.toml", "model.wcz")   # prune, cluster, encode, write
    weightcodec.load_into(model, "model.wcz")                 # and back
    weightcodec.encode_to_size(model.state_dict(), "model.wcz", size=10_000_000)  # a byte budget in
    weightcodec.compress_to_error(model, "recipe.toml", "model.wcz", target_error=2.0)  # an error budget in
"""

# Set before the submodules are imported: the files they write record it as their producer.
__version__ = "0.1.0"

from .allocate import encode_to_size, parse_size  # noqa: E402
from .calibration_file import load_calibration, save_calibration  # noqa: E402
from .exact import encode_exact  # noqa: E402
from .api import apply_recipe, compress, load, load_bytes, load_into  # noqa: E402
from .errors import CorruptFileError, DataError, EncodeError, FormatError, WeightcodecError  # noqa: E402
from .recipe import Recipe, load_recipe, parse_recipe  # noqa: E402
from .simplify.calibrate import calibration_statistics  # noqa: E402

__all__ = [
    "__version__",
    "compress",
    "compress_to_error",
    "encode_to_size",
    "encode_exact",
    "calibration_statistics",
    "save_calibration",
    "load_calibration",
    "parse_size",
    "apply_recipe",
    "load",
    "load_bytes",
    "load_into",
    "Recipe",
    "load_recipe",
    "parse_recipe",
    "WeightcodecError",
    "FormatError",
    "CorruptFileError",
    "EncodeError",
    "DataError",
]


def __getattr__(name: str):
    """``compress_to_error`` is imported on first use: it lives in :mod:`.pipelines`, above the API's layer."""
    if name == "compress_to_error":
        from .pipelines.auto_model import compress_to_error

        return compress_to_error
    raise AttributeError(f"module 'weightcodec' has no attribute {name!r}")
