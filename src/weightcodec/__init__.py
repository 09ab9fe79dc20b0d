"""weightcodec: shrink trained PyTorch models into one real, small file, and restore them.

::

    import weightcodec
    weightcodec.compress(model, "recipe.toml", "model.wcz")   # prune, cluster, encode, write
    weightcodec.load_into(model, "model.wcz")                 # and back
    weightcodec.encode_to_size(model.state_dict(), "model.wcz", size=10_000_000)  # a byte budget in
    weightcodec.compress_to_error(model, "recipe.toml", "model.wcz", target_error=2.0)  # an error budget in

The public names below, and the submodules, are imported on first use: ``import weightcodec``
alone imports neither torch nor numba, so a command line pays only for the imports of its own
command (:mod:`weightcodec.cli`).
"""

import importlib

# Set before the submodules are imported: the files they write record it as their producer.
__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "compress": "api",
    "compress_to_error": "pipelines.auto_model",
    "encode_to_size": "allocate",
    "encode_exact": "exact",
    "calibration_statistics": "simplify.calibrate",
    "save_calibration": "calibration_file",
    "load_calibration": "calibration_file",
    "parse_size": "allocate",
    "apply_recipe": "api",
    "load": "api",
    "load_bytes": "api",
    "load_into": "api",
    "Recipe": "recipe",
    "load_recipe": "recipe",
    "parse_recipe": "recipe",
    "WeightcodecError": "errors",
    "FormatError": "errors",
    "CorruptFileError": "errors",
    "EncodeError": "errors",
    "DataError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """A public name or a submodule (``weightcodec.container``), imported on first use and kept."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # the submodule exists; something it imports is missing
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
