"""Data-free rate allocation: a byte budget in, the least squared weight error out.

:func:`encode_to_size` writes a ``.wcz`` file of at most ``size`` bytes (header included) from
a bare state_dict. Per tensor it considers a set of *options*, each with a size in bytes and a
distortion (sum of squared weight errors):

* float tensors with two or more dims: uniform scalar quantization
  (:mod:`~weightcodec.codecs.uniform`) at every step ``Δ = 2^(j/8)`` of a fixed grid that spans
  ~10 bits per weight down to "all zero", each with the dead zones :data:`DEAD_ZONES`; float16
  and the original bytes;
* other float tensors (biases, LayerNorm scales; < 1% of a model's bytes): float16 or the
  original bytes;
* integer and bool tensors (``position_ids``): their bytes, exactly.

It then minimises ``sum(D_t) + λ sum(B_t)`` (each tensor independently picks the option of
least ``D + λ B``) and bisects ``λ`` for the largest total that fits; what that leaves is spent
by greedy upgrades (the most distortion saved per extra byte first). One step for all
tensors is what this converges to at high rate, the equal-slope condition of optimal
allocation; the search also handles the low-rate end, where tensors go to zero one by one.

The sizes of the quantized options are first *estimated* (order-0 entropy of the levels, on
a fixed subsample of large tensors), then the chosen options are really encoded; each tensor's
estimates are rescaled by the ratio real / estimated at its chosen step, the header's real size
replaces its estimate, and the search repeats until the real file fits and is within
:data:`TOLERANCE` of the budget, or :data:`MAX_ROUNDS` are spent (the best file that fits is
kept). Everything is deterministic: the same state_dict and budget give the same bytes.

The distortion is the plain squared error, except for token-embedding tables (their error is
weighted by :data:`TOKEN_EMBEDDING_SENSITIVITY`: a row only matters when its token occurs).
With ``calibration`` (:func:`weightcodec.calibration_statistics`), each error inside a tensor is
also weighted by its input column's second moment (Linear) or its row's token frequency
(Embedding), and that tensor gets one step per column or per row. k-means codebooks (the deep
codec) are not among the options: at equal bytes they leave 18-26% more squared error than a
uniform step on MiniLM's layers at 8-32 clusters (2% at 64).
"""

from __future__ import annotations

import fnmatch
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from tqdm import tqdm

from . import __version__, container, tensors
from .codecs import raw, uniform
from .codecs.compensate import compensated_levels
from .errors import EncodeError

__all__ = ["encode_to_size", "parse_size", "STEP_GRID_PER_OCTAVE"]

#: Steps tried per factor of two (2^(1/8) apart: ~1/8 bit per weight between neighbours).
STEP_GRID_PER_OCTAVE = 8
# The grid spans from std / 2^FINEST_BITS (~10 bits per weight, beyond float16's value per byte)
# to COARSEST x max|w| (all zero).
FINEST_BITS = 8
COARSEST = 4.0
#: Dead zones tried at every step (uniform.quantize_levels' z): a wider zero bin pays at low rates
#: (measured on MiniLM: about -8% squared error at 2 bits per weight, -20% at 1 bit; +7% at 4 bits
#: for z = 0.1), so the search picks it per tensor.
DEAD_ZONES = (0.0, 0.1, 0.2, 0.3)
#: Token-embedding tables (one row looked up per token, most rows rarely): names, and the weight of
#: their squared error against every other tensor's in data-free mode. Chosen on MiniLM with 160
#: validation sentences (mean cosine of sentence embeddings at 7.5 and 10 MB; 1 -> 0.875 / 0.954,
#: 0.25 -> 0.915 / 0.975, 0.1 -> 0.943 / 0.984).
TOKEN_EMBEDDINGS = ("*word_embeddings.weight", "*embed_tokens.weight", "*wte.weight", "*tok_embeddings.weight")
TOKEN_EMBEDDING_SENSITIVITY = 0.1
#: Calibrated mode: importances are floored at this fraction of their mean, so that a column or a
#: row the calibration inputs never used (a token absent from them) still keeps a step. Chosen on
#: MiniLM (160 calibration sentences, 160 other validation sentences; mean / worst cosine at 7.5
#: and 10 MB): 0.1 -> 0.965 / 0.892 and 0.992 / 0.975; 1.0 -> 0.968 / 0.942 and 0.990 / 0.981.
CALIBRATION_FLOOR = 1.0
# Tensors larger than this are estimated on an evenly strided subsample of about this size.
ESTIMATE_SAMPLE = 1 << 15
# Stop once the real file is within this fraction under the budget.
TOLERANCE = 0.003
MAX_ROUNDS = 8
# Header bytes assumed per tensor before the first real file is built.
HEADER_GUESS_PER_TENSOR = 300
BISECTION_STEPS = 100
# Greedy upgrades after the Lagrangian choice, to use the budget it leaves (see _Search._fill).
FILL_STEPS = 200
SIZE_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@dataclass(frozen=True)
class Option:
    """One way to store a tensor: ``kind`` ("uniform", "float16", "raw"), its step and dead zone,
    estimated bytes and distortion."""

    kind: str
    step: float | None
    bytes: float
    distortion: float
    dead_zone: float = 0.0


def parse_size(text: str) -> int:
    """Bytes from ``"10485760"``, ``"10M"``, ``"10MB"``, ``"9.5MiB"`` (decimal K/M/G, binary KiB/MiB/GiB).

    Examples
    --------
    >>> parse_size("10MB"), parse_size("10M"), parse_size("1.5KiB"), parse_size("512")
    (10000000, 10000000, 1536, 512)
    """
    cleaned = str(text).strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGIB")
    unit = cleaned[len(number):]
    try:
        value = float(number) * SIZE_UNITS[unit]
    except (KeyError, ValueError):
        raise EncodeError(
            f"cannot read size {text!r}; expected a number of bytes with an optional unit "
            f"({', '.join(u for u in SIZE_UNITS if u)}), e.g. 10MB or 10485760"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise EncodeError(f"size must be a positive number of bytes, got {text!r}")
    return int(value)


def encode_to_size(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    size: int | None = None,
    ratio: float | None = None,
    calibration=None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Write ``state_dict`` to a ``.wcz`` file of at most ``size`` bytes with the least weight error.

    Parameters
    ----------
    state_dict : mapping of str to torch.Tensor
        Any state_dict; not modified.
    path : str or os.PathLike
        The file to write (atomically).
    size : int, optional
        Budget in bytes for the whole file, header included.
    ratio : float, optional
        Instead of ``size``: the budget is the state_dict's bytes divided by ``ratio``.
    calibration : mapping of str to ndarray, optional
        Importances from :func:`weightcodec.calibration_statistics` (a few hundred unlabeled
        inputs run through the model): within a tensor listed there, each error is weighted by
        them, ``sum h (w - q)^2`` (``h`` floored and scaled to mean 1), with one step per
        column (Linear) or per row (Embedding); a Linear given its whole ``E[x x^T]``
        (``calibration_statistics(..., full=True)``) also has its rounding errors compensated
        column by column, GPTQ-style. Between tensors, every error counts alike,
        except token-embedding tables (:data:`TOKEN_EMBEDDINGS`), weighted by
        :data:`TOKEN_EMBEDDING_SENSITIVITY`: an input's statistics say which columns of a layer
        matter, not how much the layer's output matters to the model's.
    seed : int
        Recorded in the file's metadata (the data-free search draws no random numbers).
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        ``file_bytes``, ``budget``, ``seconds``, ``rounds`` (search rounds), ``distortion``
        (sum of squared errors), ``relative_error`` (``sqrt(distortion / sum(w^2))``) and
        ``tensors``: name -> ``{"codec", "step", "dead_zone", "bytes", "mse"}`` (``codec`` is
        "uniform", "float16" or "raw"; ``step`` is None unless uniform; ``bytes`` its sections).

    Raises
    ------
    EncodeError
        If neither or both of ``size`` / ``ratio`` are given, the budget is below the smallest
        possible file (the message gives it), a float tensor holds NaN / Inf, or a
        ``calibration`` entry names no tensor or does not fit its shape.
    """
    started = time.perf_counter()
    container.check_writable(path)
    budget = _budget(state_dict, size, ratio)
    names = list(state_dict)
    arrays = {name: _as_values(name, state_dict[name]) for name in names}
    scales, hessians = _column_or_row_scales(arrays, calibration or {})
    options = {
        name: _options(state_dict[name], arrays[name], scales.get(name), _sensitivity(name))
        for name in tqdm(names, desc="estimating", unit="tensor", disable=not progress)
    }
    metadata = {"producer": f"weightcodec {__version__}", "method": "encode_to_size", "budget": str(budget), "seed": str(seed)}
    search = _Search(state_dict, arrays, options, metadata, scales, hessians)
    data, choice, rounds = search.run(budget, progress)
    container.atomic_write_bytes(Path(path), data)
    return _report(search, choice, data, budget, rounds, time.perf_counter() - started)


# ----------------------------------------------------------------------------- options


def _budget(state_dict: Mapping[str, torch.Tensor], size: int | None, ratio: float | None) -> int:
    if (size is None) == (ratio is None):
        raise EncodeError(f"give exactly one of size= (bytes) or ratio=, got size={size!r}, ratio={ratio!r}")
    if ratio is not None:
        if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
            raise EncodeError(f"ratio must be a positive number, got {ratio!r}")
        original = sum(t.numel() * t.element_size() for t in state_dict.values())
        return int(original / ratio)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise EncodeError(f"size must be a positive int (bytes), got {size!r}; parse text like '10MB' with parse_size")
    return int(size)


def _as_values(name: str, tensor: torch.Tensor) -> np.ndarray | None:
    """Float tensors as float32 NumPy (checked finite); None for those stored by their bytes only."""
    tensors.dtype_name(tensor, name)
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return None
    values = tensor.detach().cpu().to(torch.float32).numpy()
    if not np.isfinite(values).all():
        raise EncodeError(f"{name} holds NaN or infinite values; encode_to_size needs finite weights")
    return values


def _sensitivity(name: str) -> float:
    """The weight of a tensor's squared error against the other tensors' (1 but for token embeddings)."""
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in TOKEN_EMBEDDINGS):
        return TOKEN_EMBEDDING_SENSITIVITY
    return 1.0


def _column_or_row_scales(arrays: Mapping[str, np.ndarray | None], calibration: Mapping) -> tuple[dict, dict]:
    """Per calibrated tensor: ``h`` floored at CALIBRATION_FLOOR x its mean, over its mean (mean 1);
    and the full input moments ``E[x x^T]`` of those given whole (for GPTQ compensation)."""
    if not isinstance(calibration, Mapping):
        raise EncodeError(
            f"calibration must map tensor names to importances (weightcodec.calibration_statistics), "
            f"got {type(calibration).__name__}"
        )
    problems, scales, hessians = [], {}, {}
    for name, importance in calibration.items():
        values = arrays.get(name)
        h = np.asarray(importance, dtype=np.float64)
        if values is None or values.ndim < 2:
            problems.append(f"{name!r} is not a float tensor with two or more dims here")
            continue
        rows, cols = uniform.matrix_shape(values.shape)
        if h.shape == (cols, cols) and cols > 1 and np.isfinite(h).all():
            hessians[name], h = h, np.diag(h).reshape(1, cols).copy()
        if h.shape not in ((1, cols), (rows, 1)):
            problems.append(f"{name!r}: importance of shape {h.shape}, expected (1, {cols}), ({rows}, 1) or ({cols}, {cols})")
            continue
        if not np.isfinite(h).all() or (h < 0).any() or not h.any():
            problems.append(f"{name!r}: importances must be finite, non-negative and not all zero "
                            f"(got values from {h.min():g} to {h.max():g})")
            continue
        floored = h + CALIBRATION_FLOOR * h.mean()
        scales[name] = floored / floored.mean()
    if problems:
        raise EncodeError("calibration does not fit the state_dict: " + "; ".join(problems))
    return scales, hessians


def _options(tensor: torch.Tensor, values: np.ndarray | None, importance: np.ndarray | None, weight: float) -> list[Option]:
    """Every option of one tensor, the exact one (its own bytes) first; distortions times ``weight``.

    With ``importance`` ``h`` (a step matrix shape, mean 1), the weighted error ``sum h (w - q)^2``
    of steps ``Δ / s`` with ``s = sqrt(h)`` is the plain error of ``w s`` at step ``Δ``: the
    uniform options are estimated on ``w s``.
    """
    exact = Option("raw", None, tensor.numel() * tensor.element_size(), 0.0)
    if values is None:
        return [exact]
    matrix = values.reshape(uniform.matrix_shape(values.shape)).astype(np.float64)
    h = np.ones((1, 1)) if importance is None else importance
    half = matrix.astype(np.float16).astype(np.float64)
    options = [exact]
    if tensor.dtype != torch.float16 and np.isfinite(half).all():
        options.append(Option("float16", None, 2.0 * matrix.size, weight * float((h * (matrix - half) ** 2).sum())))
    if values.ndim >= 2:
        steps_bytes = 0 if importance is None else uniform.STEP_DTYPE.itemsize * importance.size
        options += [
            Option(o.kind, o.step, o.bytes + steps_bytes, weight * o.distortion, o.dead_zone)
            for o in _uniform_options((matrix * np.sqrt(h)).reshape(-1))
        ]
    return options


def _uniform_options(flat: np.ndarray) -> list[Option]:
    """Estimated (bytes, squared error) at each grid step, from a strided subsample of large tensors."""
    peak = float(np.abs(flat).max())
    if peak == 0:
        return [Option("uniform", 1.0, 0.0, 0.0)]
    stride = max(1, flat.size // ESTIMATE_SAMPLE)
    sample = flat[::stride]
    scale = flat.size / sample.size
    spread = float(sample.std()) or peak
    first = math.floor(STEP_GRID_PER_OCTAVE * math.log2(spread / 2**FINEST_BITS))
    last = math.ceil(STEP_GRID_PER_OCTAVE * math.log2(COARSEST * peak))
    steps = np.exp2(np.arange(first, last + 1) / STEP_GRID_PER_OCTAVE)
    options = []
    for dead_zone in DEAD_ZONES:
        bits, errors = uniform.estimate_grid(sample, steps, dead_zone)
        options += [
            Option("uniform", float(step), scale * b / 8, scale * e, dead_zone)
            for step, b, e in zip(steps, bits, errors)
            if np.isfinite(b)
        ]
    return options


# ----------------------------------------------------------------------------- search


class _Search:
    """The Lagrangian search over every tensor's options, with real encodes to correct the estimates."""

    def __init__(self, state_dict, arrays, options, metadata, scales, hessians):
        self.state_dict, self.arrays, self.metadata, self.hessians = state_dict, arrays, metadata, hessians
        # per calibrated tensor, s = sqrt(h) (h of mean 1): its steps are Δ / s
        self.scales = {name: np.sqrt(h) for name, h in scales.items()}
        self.names = list(options)
        self.options = options
        width = max(len(o) for o in options.values())
        shape = (len(self.names), width)
        self.est_bytes = np.full(shape, np.inf)
        self.distortion = np.full(shape, np.inf)
        for t, name in enumerate(self.names):
            for j, option in enumerate(options[name]):
                self.est_bytes[t, j], self.distortion[t, j] = option.bytes, option.distortion
        self.correction = np.ones(len(self.names))
        self.cache: dict[tuple[int, int], tuple[container.TensorRecord, float]] = {}

    def run(self, budget: int, progress: bool) -> tuple[bytes, np.ndarray, int]:
        overhead = 1024 + HEADER_GUESS_PER_TENSOR * len(self.names)
        margin, best = 0.0, None
        for round_index in range(1, MAX_ROUNDS + 1):
            choice = self._solve(budget - overhead - margin)
            records = self._records(choice, progress)
            data = container.to_bytes(records, self.metadata)
            if len(data) <= budget and (best is None or len(data) > len(best[0])):
                best = (data, choice, round_index)
            if budget * (1 - TOLERANCE) <= len(data) <= budget:
                break
            overhead = len(data) - sum(rec.nbytes for rec in records)
            self._correct(choice, records)
            # what the corrected estimates still miss: keep the overshoot as a margin, halve it once under
            margin = margin + len(data) - budget if len(data) > budget else margin / 2
        if best is None:
            smallest = self._smallest_file()
            raise EncodeError(
                f"cannot fit the state_dict in {budget} bytes; the smallest file this search reaches is "
                f"about {smallest} bytes: give a larger size or a smaller ratio"
            )
        return best[0], best[1], best[2]

    def _solve(self, target: float) -> np.ndarray:
        """Per tensor, the option index minimising D + λ B, for the smallest λ whose total fits ``target``."""
        sizes = self.est_bytes * self.correction[:, None]
        sizes[:, 0] = self.est_bytes[:, 0]  # the exact option is never an estimate
        low, high = -40.0, 40.0  # log2 λ, in squared-error units per byte
        if self._total(sizes, 2.0**high) > target:
            return self._pick(sizes, 2.0**high)
        for _ in range(BISECTION_STEPS):
            middle = (low + high) / 2
            if self._total(sizes, 2.0**middle) <= target:
                high = middle
            else:
                low = middle
        return self._fill(sizes, self._pick(sizes, 2.0**high), target)

    def _fill(self, sizes: np.ndarray, choice: np.ndarray, target: float) -> np.ndarray:
        """Spend what the Lagrangian choice leaves of ``target``, greedily.

        The total is a step function of λ (one tensor changes option at a time, and a large
        tensor's step moves a few percent of the file), so the best λ can leave a few percent
        unused. Upgrade, one at a time, the tensor whose next better option buys the most
        distortion per extra byte among those that still fit.
        """
        choice = choice.copy()
        rows = np.arange(len(choice))
        for _ in range(FILL_STEPS):
            slack = target - float(sizes[rows, choice].sum())
            extra = sizes - sizes[rows, choice][:, None]
            saved = self.distortion[rows, choice][:, None] - self.distortion
            usable = (extra > 0) & (extra <= slack) & (saved > 0) & np.isfinite(sizes)
            if not usable.any():
                break
            gain = np.where(usable, saved / np.where(usable, extra, 1.0), -np.inf)
            t, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
            choice[t] = j
        return choice

    def _pick(self, sizes: np.ndarray, lam: float) -> np.ndarray:
        cost = self.distortion + lam * sizes
        cost[~np.isfinite(sizes)] = np.inf
        return np.argmin(cost, axis=1)

    def _total(self, sizes: np.ndarray, lam: float) -> float:
        choice = self._pick(sizes, lam)
        return float(sizes[np.arange(len(choice)), choice].sum())

    def _records(self, choice: np.ndarray, progress: bool) -> list[container.TensorRecord]:
        todo = [(t, int(j)) for t, j in enumerate(choice) if (t, int(j)) not in self.cache]
        for t, j in tqdm(todo, desc="encoding", unit="tensor", disable=not progress or len(todo) < 2):
            self.cache[(t, j)] = self._encode(t, j)
        return [self.cache[(t, int(j))][0] for t, j in enumerate(choice)]

    def _encode(self, t: int, j: int) -> tuple[container.TensorRecord, float]:
        """The real record of tensor ``t`` in option ``j`` and its exact squared error."""
        name = self.names[t]
        tensor, option = self.state_dict[name], self.options[name][j]
        dtype = tensors.dtype_name(tensor, name)
        values = self.arrays[name]
        if option.kind == "raw":
            return container.TensorRecord(name, dtype, tuple(tensor.shape), raw.encode(tensors.tensor_to_numpy(tensor))), 0.0
        if option.kind == "float16":
            half = values.astype(np.float16)
            encoded, restored = raw.encode(half), half
        else:
            s = self.scales.get(name)
            steps = np.array([[option.step]], dtype=np.float32) if s is None else (option.step / s).astype(np.float32)
            if name in self.hessians:
                matrix = values.reshape(uniform.matrix_shape(values.shape))
                levels = compensated_levels(matrix, steps, option.dead_zone, self.hessians[name])
            else:
                levels, error = uniform.quantize_with_error(values, steps, option.dead_zone)
                if tensor.dtype == torch.float32:  # decoded values are loaded as they are: the error is exact
                    return container.TensorRecord(name, dtype, tuple(tensor.shape), uniform.encode_levels(levels, steps)), error
            encoded, restored = uniform.encode_levels(levels, steps), levels.astype(np.float32) * steps
        return container.TensorRecord(name, dtype, tuple(tensor.shape), encoded), _squared_error(tensor, restored)

    def _correct(self, choice: np.ndarray, records: list[container.TensorRecord]) -> None:
        """Rescale each quantized tensor's estimates by real / estimated bytes at its chosen step."""
        for t, (j, record) in enumerate(zip(choice, records)):
            estimate = self.est_bytes[t, j]
            if self.options[self.names[t]][j].kind == "uniform" and estimate > 0:
                self.correction[t] = record.nbytes / estimate

    def _smallest_file(self) -> int:
        choice = np.array([np.nanargmin(np.where(np.isfinite(row), row, np.nan)) for row in self.est_bytes])
        return len(container.to_bytes(self._records(choice, False), self.metadata))


def _squared_error(tensor: torch.Tensor, restored: np.ndarray) -> float:
    """Squared error of ``restored`` as it will be loaded: cast to the tensor's own dtype first."""
    loaded = torch.from_numpy(np.ascontiguousarray(restored)).reshape(tensor.shape).to(tensor.dtype)
    return float(((loaded.double() - tensor.detach().cpu().double()) ** 2).sum())


def _report(search: _Search, choice: np.ndarray, data: bytes, budget: int, rounds: int, seconds: float) -> dict:
    per_tensor, total_error, total_energy = {}, 0.0, 0.0
    for t, name in enumerate(search.names):
        record, error = search.cache[(t, int(choice[t]))]
        option = search.options[name][int(choice[t])]
        count = max(1, search.state_dict[name].numel())
        per_tensor[name] = {
            "codec": option.kind, "step": option.step, "dead_zone": option.dead_zone, "bytes": record.nbytes, "mse": error / count
        }
        values = search.arrays[name]
        if values is not None:
            total_error += error
            total_energy += float((values.astype(np.float64) ** 2).sum())
    return {
        "file_bytes": len(data),
        "budget": budget,
        "seconds": seconds,
        "rounds": rounds,
        "distortion": total_error,
        "relative_error": math.sqrt(total_error / total_energy) if total_energy else 0.0,
        "tensors": per_tensor,
    }
