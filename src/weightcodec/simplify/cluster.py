"""Trained quantization by weight sharing (Deep Compression §3, Han, Mao, Dally 2016).

Each layer's non-zero weights are clustered by 1-D k-means into ``k`` centroids (the
*codebook*); every weight then stores only its *code*, the index of its centroid. Zeros are not
clustered: the sparsity pattern (the *mask*) is never changed.

1-D k-means is solved on the sorted values: a cluster is then a contiguous run, its boundaries
are the midpoints between neighbouring centroids (found with :func:`numpy.searchsorted`), and its
mean comes from prefix sums, so one Lloyd iteration costs O(k log n) after an O(n log n) sort::

    sorted w:  . .. ...|.. . ....|... .. .|.. ...
    centroids:   c0    m01  c1   m12  c2  m23 c3      (m = midpoints = cluster boundaries)

Initialisations (Deep Compression §3.2, Figure 4): ``linear`` (k values evenly spaced between
min and max; the paper's best, it keeps centroids among the rare large weights), ``density``
(values at evenly spaced levels of the empirical CDF) and ``random`` (Forgy: k distinct
observations drawn with ``seed``).

A cluster left empty (``linear`` across the gap that pruning leaves around zero puts centroids
where no weight is) is re-seeded by splitting the cluster with the largest squared error, so
the layer always uses the ``k`` distinct values asked for when it has at least ``k`` distinct
non-zeros.

Fine-tuning (Eq. 3): :func:`share_weights_` ties ``module.weight`` to
``centroids[codes] * mask`` with :mod:`torch.nn.utils.parametrize`; the centroids are the only
trained Parameter, so autograd gives centroid ``k`` the *sum* of the gradients of the weights
whose code is ``k``: ``dL/dC_k = sum_ij dL/dW_ij 1(I_ij = k)``. :func:`make_permanent_` turns the
tied weight back into a plain Parameter.

k-means runs on the CPU (NumPy) whatever the model's device: a GPU weight's non-zeros are copied
to the host, and the codes and mask of :class:`SharedWeights` go back to the weight's device, so
fine-tuning stays there. It costs about one sort of the non-zeros (benchmarks/results/throughput.md).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import EncodeError

__all__ = [
    "INITS",
    "kmeans_1d",
    "quantize",
    "SharedWeights",
    "share_weights_",
    "make_permanent_",
    "is_shared",
]

DEFAULT_ITERS = 300  # 1-D Lloyd usually converges in tens of iterations; each costs O(k log n)


def _init_linear(values: np.ndarray, k: int, seed: int) -> np.ndarray:
    return np.linspace(values[0], values[-1], k)


def _init_density(values: np.ndarray, k: int, seed: int) -> np.ndarray:
    # CDF levels at the middle of k equal slices, so k = 1 gives the median
    return np.quantile(values, (np.arange(k) + 0.5) / k)


def _init_random(values: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.unique(values), size=k, replace=False))


INITS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "linear": _init_linear,
    "density": _init_density,
    "random": _init_random,
}


def kmeans_1d(
    values: np.ndarray, k: int, *, init: str = "linear", seed: int = 0, iters: int = DEFAULT_ITERS
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D ``values`` into ``k`` centroids with Lloyd's algorithm on the sorted values.

    Parameters
    ----------
    values : numpy.ndarray
        Any shape (flattened), real, finite; at least ``k`` distinct values.
    k : int
        Number of clusters, ``>= 1``.
    init : {"linear", "density", "random"}
        Centroid initialisation (see the module docstring).
    seed : int
        Seed of ``init="random"`` (ignored by the others).
    iters : int
        Maximum Lloyd iterations; stops earlier once the centroids no longer move.

    Returns
    -------
    centroids : numpy.ndarray
        float32, shape ``(k,)``, strictly ascending: ``k`` distinct values, each the mean of
        its members. No cluster is ever empty (see :func:`_fill_empty_runs`).
    labels : numpy.ndarray
        int64, shape ``(values.size,)``: the cluster of each value, every one of ``0 .. k-1``
        used. Once converged this is the nearest centroid (ties at a midpoint go to the lower
        one).

    Raises
    ------
    EncodeError
        If ``values`` is empty or not finite, ``k < 1``, ``k`` exceeds the number of distinct
        values, ``iters < 1`` or ``init`` is unknown.

    Examples
    --------
    >>> centroids, labels = kmeans_1d(np.array([0.0, 0.1, 1.0, 1.1]), 2)
    >>> [round(c, 3) for c in centroids.tolist()], labels.tolist()
    ([0.05, 1.05], [0, 0, 1, 1])
    """
    flat = _check_values(values, k, init, iters)
    ordered = np.sort(flat)
    prefix = np.concatenate(([0.0], np.cumsum(ordered)))
    prefix_squares = np.concatenate(([0.0], np.cumsum(ordered * ordered)))
    start = np.sort(INITS[init](ordered, k, seed).astype(np.float64))
    bounds = _fill_empty_runs(_assign_runs(ordered, start), ordered, prefix, prefix_squares)
    for _ in range(iters):
        centroids = _run_means(bounds, ordered, prefix)
        assigned = _fill_empty_runs(_assign_runs(ordered, centroids), ordered, prefix, prefix_squares)
        if np.array_equal(assigned, bounds):
            break
        bounds = assigned
    centroids = _run_means(bounds, ordered, prefix).astype(np.float32)
    # the run of a value is the first run whose largest member is >= the value
    labels = np.searchsorted(ordered[bounds[1:-1] - 1], flat, side="left").astype(np.int64)
    return centroids, labels


def quantize(weight: torch.Tensor, k: int, *, init: str = "linear", seed: int = 0, iters: int = DEFAULT_ITERS) -> torch.Tensor:
    """Replace each non-zero of ``weight`` by its k-means centroid; zeros stay exactly zero.

    Parameters
    ----------
    weight : torch.Tensor
        Floating point, finite, any shape.
    k : int
        Number of clusters for the non-zero values.
    init, seed, iters
        As in :func:`kmeans_1d`.

    Returns
    -------
    torch.Tensor
        Same shape and dtype; at most ``k`` distinct non-zero values and the same zero pattern
        (a centroid that is exactly 0.0 is nudged to the smallest float32 of its sign, so no
        kept weight becomes a zero). An all-zero ``weight`` comes back as a copy.

    Raises
    ------
    EncodeError
        If ``k`` exceeds the number of distinct non-zero values (the tensor is then already
        quantized: store it as is or pass a smaller ``k``), or on invalid input as in
        :func:`kmeans_1d`.

    Examples
    --------
    >>> [round(v, 3) for v in quantize(torch.tensor([0.0, 0.1, 0.2, 1.0, 1.1]), 2).tolist()]
    [0.0, 0.15, 0.15, 1.05, 1.05]
    """
    centroids, codes, mask = _cluster_nonzeros(weight, k, init, seed, iters)
    if codes is None:
        return weight.detach().clone()
    flat = torch.zeros(weight.numel(), dtype=torch.float32)
    flat[mask.flatten()] = torch.from_numpy(centroids[codes])
    return flat.view(weight.shape).to(weight.dtype)


# ----------------------------------------------------------------------------- fine-tuning


class SharedWeights(nn.Module):
    """Parametrization ``centroids -> centroids[codes] * mask`` for :mod:`torch.nn.utils.parametrize`.

    Registered with ``unsafe=True`` so that the parametrized tensor's *original* is the centroid
    vector itself (shape ``(k,)``): it is the only trained Parameter of the layer.

    Attributes
    ----------
    codes : torch.Tensor
        int64 buffer of the weight's shape: the centroid index of each weight (0 where pruned).
    mask : torch.Tensor
        Bool buffer of the weight's shape; True = kept.
    """

    def __init__(self, codes: torch.Tensor, mask: torch.Tensor, k: int) -> None:
        super().__init__()
        self.k = k
        self.register_buffer("codes", codes.long())
        self.register_buffer("mask", mask.bool())
        # the kept entries only: scattering them is ~50x faster than indexing the whole tensor
        self.register_buffer("positions", mask.flatten().nonzero().squeeze(1), persistent=False)
        self.register_buffer("kept_codes", self.codes.flatten()[self.positions], persistent=False)

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        # index_select's backward adds up: each centroid receives the sum of its weights' gradients
        values = centroids.index_select(0, self.kept_codes)
        flat = torch.zeros(self.codes.numel(), dtype=centroids.dtype, device=centroids.device)
        return flat.scatter(0, self.positions, values).view(self.codes.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Least-squares centroids for fixed codes: the mean of each code's kept weights."""
        kept = self.mask.flatten()
        codes = self.codes.flatten()[kept]
        values = weight.detach().flatten()[kept].to(torch.float64)
        sums = torch.zeros(self.k, dtype=torch.float64, device=values.device).index_add_(0, codes, values)
        counts = torch.bincount(codes, minlength=self.k).clamp(min=1)
        return (sums / counts).to(weight.dtype)


def share_weights_(
    module: nn.Module, name: str = "weight", k: int = 32, *, init: str = "linear", seed: int = 0, iters: int = DEFAULT_ITERS
) -> SharedWeights:
    """Cluster ``module.<name>`` and tie it to ``centroids[codes] * mask`` for fine-tuning.

    After this call ``module.parametrizations[name].original`` is the trainable centroid vector
    (float, shape ``(k,)``) and ``module.<name>`` is computed from it on every access. The
    codes and the mask (``weight != 0``) are fixed buffers. Finish with :func:`make_permanent_`.

    Parameters
    ----------
    module : torch.nn.Module
    name : str
        Parameter name.
    k, init, seed, iters
        As in :func:`quantize`.

    Returns
    -------
    SharedWeights
        The installed parametrization.

    Raises
    ------
    EncodeError
        If the parameter carries a pruning mask (make it permanent first with
        :func:`weightcodec.simplify.prune.remove_`), is already shared, is all zeros, or on
        invalid input as in :func:`quantize`. The module is left untouched.

    Examples
    --------
    >>> layer = nn.Linear(8, 4)
    >>> _ = share_weights_(layer, k=3)
    >>> len(torch.unique(layer.weight))
    3
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, nn.Parameter) or parametrize.is_parametrized(module, name) or hasattr(module, f"{name}_mask"):
        raise EncodeError(
            f"{type(module).__name__}.{name} must be a plain Parameter (remove pruning masks or "
            "earlier weight sharing first)"
        )
    centroids, codes, mask = _cluster_nonzeros(weight, k, init, seed, iters)
    if codes is None:
        raise EncodeError(f"{type(module).__name__}.{name} is all zeros: nothing to cluster")
    full_codes = torch.zeros(weight.numel(), dtype=torch.long)
    full_codes[mask.flatten()] = torch.from_numpy(codes)
    # the codes and the mask live beside the weight (a GPU model keeps its ties on the GPU)
    shared = SharedWeights(full_codes.view(weight.shape).to(weight.device), mask.to(weight.device), k)
    parametrize.register_parametrization(module, name, shared, unsafe=True)
    with torch.no_grad():
        module.parametrizations[name].original.copy_(torch.from_numpy(centroids))
    return shared


def is_shared(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` is tied to shared centroids by :func:`share_weights_`."""
    return parametrize.is_parametrized(module, name) and any(
        isinstance(p, SharedWeights) for p in module.parametrizations[name]
    )


def make_permanent_(module: nn.Module, name: str = "weight") -> nn.Module:
    """Turn the shared weight into a plain Parameter ``centroids[codes] * mask``. Cannot be undone.

    The centroids, codes and mask are dropped; the weight keeps its at most ``k`` distinct
    non-zero values, and later training would move them independently.

    Raises
    ------
    EncodeError
        If ``module.<name>`` is not shared.
    """
    if not is_shared(module, name):
        raise EncodeError(f"{type(module).__name__}.{name} is not tied to shared centroids")
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return module


# ----------------------------------------------------------------------------- helpers


def _midpoints(centroids: np.ndarray) -> np.ndarray:
    return (centroids[:-1] + centroids[1:]) / 2


def _assign_runs(ordered: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Lloyd's assignment step on sorted values: the ``k + 1`` bounds of each centroid's run.

    Run ``j`` is ``ordered[bounds[j]:bounds[j + 1]]``, the values nearest centroid ``j``; equal
    values always share a run. A run is empty where no value lies between two midpoints.
    """
    inner = np.searchsorted(ordered, _midpoints(centroids), side="right")
    return np.concatenate(([0], inner, [ordered.size]))


def _run_means(bounds: np.ndarray, ordered: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """Lloyd's update step: the mean of each (non-empty) run, from the prefix sums.

    Prefix sums lose precision on runs of values much smaller than the running total; a mean
    lies within its run, so it is clipped there. As runs are split between distinct values, the
    means are then strictly ascending, in float64 and after rounding to float32 alike.
    """
    means = (prefix[bounds[1:]] - prefix[bounds[:-1]]) / np.diff(bounds)
    return np.clip(means, ordered[bounds[:-1]], ordered[bounds[1:] - 1])


def _fill_empty_runs(bounds: np.ndarray, ordered: np.ndarray, prefix: np.ndarray, prefix_squares: np.ndarray) -> np.ndarray:
    """Re-seed empty clusters: split the run with the largest squared error until none is empty.

    Linear initialisation across the gap that pruning leaves around zero puts centroids where
    no weight is; plain Lloyd would keep them empty and the layer would use fewer than the
    ``k`` values asked for. Each empty run is dropped and the non-empty run with the largest
    sum of squared errors (among those holding two or more distinct values) is cut in two where
    the squared error of the halves is smallest. This only lowers the total error, and with at
    least ``k`` distinct values (checked by the caller) there is always a run to cut, so the
    result has ``k`` non-empty runs split between distinct values. Deterministic: ties go to
    the first run and the first cut.
    """
    k = bounds.size - 1
    runs = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    while len(runs) < k:
        errors = [_squared_error(lo, hi, prefix, prefix_squares) if ordered[lo] != ordered[hi - 1] else -1.0
                  for lo, hi in runs]
        worst = int(np.argmax(errors))
        lo, hi = runs[worst]
        runs[worst : worst + 1] = [(lo, cut := _best_cut(lo, hi, ordered, prefix, prefix_squares)), (cut, hi)]
    return np.array([0] + [hi for _, hi in runs], dtype=np.int64)


def _squared_error(lo, hi, prefix: np.ndarray, prefix_squares: np.ndarray):
    """Sum of squared distances to the mean of ``ordered[lo:hi]`` (arrays of runs broadcast)."""
    total = prefix[hi] - prefix[lo]
    return np.maximum(prefix_squares[hi] - prefix_squares[lo] - total * total / (hi - lo), 0.0)


def _best_cut(lo: int, hi: int, ordered: np.ndarray, prefix: np.ndarray, prefix_squares: np.ndarray) -> int:
    """The cut ``lo < c < hi`` between two distinct values minimising the halves' squared error."""
    cuts = lo + 1 + np.flatnonzero(ordered[lo + 1 : hi] != ordered[lo : hi - 1])
    errors = _squared_error(lo, cuts, prefix, prefix_squares) + _squared_error(cuts, hi, prefix, prefix_squares)
    return int(cuts[np.argmin(errors)])


def _check_values(values: np.ndarray, k: int, init: str, iters: int) -> np.ndarray:
    if init not in INITS:
        raise EncodeError(f"unknown init {init!r}; choose one of {sorted(INITS)}")
    flat = np.asarray(values).ravel()
    if flat.size == 0:
        raise EncodeError("kmeans_1d: no values to cluster")
    if not np.issubdtype(flat.dtype, np.number) or np.iscomplexobj(flat):
        raise EncodeError(f"kmeans_1d: values must be real numbers, got dtype {flat.dtype}")
    flat = flat.astype(np.float64)
    if not np.isfinite(flat).all():
        raise EncodeError("kmeans_1d: values hold NaN or Inf; train or load a finite model first")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise EncodeError(f"kmeans_1d: k must be an integer >= 1, got {k!r}")
    if not isinstance(iters, (int, np.integer)) or iters < 1:
        raise EncodeError(f"kmeans_1d: iters must be an integer >= 1, got {iters!r}")
    distinct = np.unique(flat).size
    if k > distinct:
        raise EncodeError(
            f"k={k} clusters but only {distinct} distinct values; use k <= {distinct} "
            "(a tensor with at most k distinct values is already quantized and can be stored as is)"
        )
    return flat


def _cluster_nonzeros(weight: torch.Tensor, k: int, init: str, seed: int, iters: int):
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise EncodeError(f"expected a floating-point tensor, got {getattr(weight, 'dtype', type(weight).__name__)}")
    values = weight.detach().cpu().to(torch.float32)
    if not bool(torch.isfinite(values).all()):
        raise EncodeError("weight holds NaN or Inf; train or load a finite model first")
    mask = values != 0
    nonzeros = values[mask].numpy()
    if nonzeros.size == 0:
        return None, None, mask
    centroids, codes = kmeans_1d(nonzeros, k, init=init, seed=seed, iters=iters)
    # a centroid of exactly 0 would turn kept weights into zeros and change the sparsity pattern
    tiny = np.float32(np.finfo(np.float32).tiny)
    centroids = np.where(centroids == 0, np.where(_side_of_zero(nonzeros, codes, centroids) < 0, -tiny, tiny), centroids)
    return centroids.astype(np.float32), codes, mask


def _side_of_zero(nonzeros: np.ndarray, codes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Per centroid, the sign of its members' sum (which side of 0 a zero centroid should move to)."""
    return np.bincount(codes, weights=nonzeros, minlength=centroids.size)
