"""The search over a filter's cell width ``t`` for one layer: encode, retrain around it, choose.

A retrieval filter stores a layer's codes in ``t``-bit cells; each zero reads back as a false
positive with probability ``K / 2**t``. :func:`sweep_t` measures every ``t`` as the network
would see it (the decoded layer in place, the later layers briefly retrained around its
errors), and :func:`choose_t` keeps the smallest ``t`` whose *validation* error stays within a
tolerance of a reference (:data:`REFERENCES`); the test split is only reported. The filter's
hash seed decides *which* zeros read back as false positives: with ``seeds`` above one, every
``t`` keeps the seed whose decoded layer costs least on validation (:func:`best_seed`), and
:func:`choose_point` chooses among the points of several ``K`` (smallest bytes first).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from .. import container
from ..errors import WeightcodecError
from .steps import Splits, encode_and_measure, module_of, retrain_after, usable_t
from .training import ArrayLoader, TrainConfig, evaluate

__all__ = ["SweepPoint", "SEED_STRIDE", "validation_loss", "best_seed", "sweep_t", "choose_point", "choose_t", "REFERENCES"]

SEED_STRIDE = 1000  # seeds tried are seed + i * SEED_STRIDE: a filter that fails to build retries seed + 1


@dataclass(frozen=True)
class SweepPoint:
    """One ``t`` of the sweep: the encoding, then errors (percent) around the retraining.

    ``valid_error_encoded`` is measured with the decoded layer in place, before retraining the
    later layers; ``valid_error`` and ``test_error`` after. ``clusters`` is the layer's ``K``,
    ``seed`` the filter seed kept and ``seeds`` every seed tried with its validation loss and
    error before retraining (the spread is what the seed search gains).
    """

    filter: str
    t: int
    bytes: int
    false_positives: int
    expected_false_positives: float
    valid_error_encoded: float
    valid_error: float
    test_error: float
    clusters: int = 0
    seed: int = 0
    seeds: list[dict] = field(default_factory=list)


def validation_loss(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Mean cross-entropy and error (percent) of ``model`` over ``loader``, in one pass.

    The loss ranks seeds more finely than the error, which moves by whole images.
    """
    model.eval()
    loss, wrong, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            wrong += int((logits.argmax(dim=1) != y).sum())
            count += len(y)
    if count == 0:
        raise WeightcodecError("validation_loss: the loader yielded no examples")
    return loss / count, 100.0 * wrong / count


def best_seed(
    model: nn.Module,
    name: str,
    clustered: torch.Tensor,
    *,
    t: int,
    filter: str,
    seeds: Iterable[int],
    valid: ArrayLoader,
    max_bytes: float = math.inf,
) -> tuple[tuple, list[dict]]:
    """Encode ``clustered`` with each seed, load what it decodes, keep the lowest validation loss.

    A filter's size varies a little with its seed (ribbon's bumping): seeds of more than
    ``max_bytes`` are kept only if none is that small. ``model`` is left holding the kept
    seed's decoded layer.

    Returns
    -------
    best : tuple
        ``(record, decoded, encoding, seed)`` of the kept seed.
    tried : list of dict
        Per seed: ``seed``, ``bytes``, ``false_positives``, ``valid_loss``, ``valid_error``.
    """
    module, weight_name = module_of(model, name), name.rpartition(".")[2]
    best, best_key, tried = None, (True, math.inf), []
    for seed in seeds:
        record, decoded, encoding = encode_and_measure(name, clustered, t=t, filter=filter, seed=seed)
        with torch.no_grad():
            getattr(module, weight_name).copy_(decoded)
        loss, error = validation_loss(model, valid)
        tried.append({"seed": seed, "bytes": encoding.bytes, "false_positives": encoding.false_positives,
                      "valid_loss": loss, "valid_error": error})  # fmt: skip
        key = (encoding.bytes > max_bytes, loss)
        if key < best_key:
            best, best_key = (record, decoded, encoding, seed), key
    with torch.no_grad():
        getattr(module, weight_name).copy_(best[1])
    return best, tried


def sweep_t(
    model: nn.Module,
    name: str,
    t_values: Iterable[int],
    config: TrainConfig,
    loader: ArrayLoader,
    splits: Splits,
    *,
    filter: str = "bloomier",
    seed: int = 0,
    seeds: int = 1,
    max_bytes: float = math.inf,
    progress: bool = True,
) -> tuple[list[SweepPoint], dict[int, tuple[container.TensorRecord, dict]]]:
    """For each ``t``: encode ``name`` in ``filter``, load what it decodes, retrain the later layers.

    With ``seeds`` above one, each ``t`` tries the filter seeds ``seed + i * SEED_STRIDE`` and
    keeps the one of lowest validation loss before retraining among those of at most
    ``max_bytes`` (:func:`best_seed`).

    ``model`` holds the pruned, clustered layer; it is left as it came. The layer itself is never
    trained here, only the layers after it (with ``config``), every ``t`` on the same batches
    (a copy of ``loader`` each), so a point does not depend on the others swept; ``t`` too
    small for the layer's clusters are skipped (:func:`~.steps.usable_t`).

    Returns
    -------
    points : list of SweepPoint
        In ``t`` order.
    kept : dict of int to (TensorRecord, dict)
        Per ``t``: the record and the model's state_dict after the retraining.
    """
    module = module_of(model, name)
    weight_name = name.rpartition(".")[2]
    clustered = getattr(module, weight_name).detach().clone()
    start = copy.deepcopy(model.state_dict())
    points, kept = [], {}
    clusters = int(torch.unique(clustered[clustered != 0]).numel())
    for t in usable_t(t_values, clustered):
        model.load_state_dict(start)
        tried_seeds = [seed + i * SEED_STRIDE for i in range(seeds)]
        (record, decoded, encoding, kept_seed), tried = best_seed(
            model, name, clustered, t=t, filter=filter, seeds=tried_seeds, valid=splits.valid, max_bytes=max_bytes
        )
        encoded_error = next(s["valid_error"] for s in tried if s["seed"] == kept_seed)
        retrain_after(model, name, config, copy.copy(loader), seed=seed, progress=progress,
                      desc=f"retrain after {name} ({filter}, t={t})")  # fmt: skip
        points.append(SweepPoint(
            **asdict(encoding),
            valid_error_encoded=encoded_error,
            valid_error=evaluate(model, splits.valid),
            test_error=evaluate(model, splits.test),
            clusters=clusters,
            seed=kept_seed,
            seeds=tried if seeds > 1 else [],
        ))  # fmt: skip
        kept[t] = (record, copy.deepcopy(model.state_dict()))
    model.load_state_dict(start)
    return points, kept


def choose_point(points: Iterable[SweepPoint], reference: float, tolerance: float, max_bytes: float = math.inf) -> SweepPoint:
    """The smallest point (bytes, then ``t``) within ``tolerance`` of ``reference`` on validation.

    Only points of at most ``max_bytes`` compete (all of them if none is that small); if none
    is within the tolerance, the one of lowest validation error (the smaller on ties).

    Raises
    ------
    WeightcodecError
        If ``points`` is empty.

    Examples
    --------
    >>> p = lambda t, b, e: SweepPoint("ribbon", t, b, 0, 0.0, e, e, e)
    >>> choose_point([p(8, 2800, 0.9), p(9, 3100, 0.7), p(10, 3500, 0.6)], 0.6, 0.0, max_bytes=3225).t
    9
    """
    points = sorted(points, key=lambda p: (p.bytes, p.t))
    if not points:
        raise WeightcodecError("choose_point: the sweep has no points (no t in t_values holds the clusters)")
    points = [p for p in points if p.bytes <= max_bytes] or points
    within = [p for p in points if p.valid_error <= reference + tolerance]
    if within:
        return within[0]
    return min(points, key=lambda p: (p.valid_error, p.bytes))


def choose_t(points: Iterable[SweepPoint], reference: float, tolerance: float) -> int:
    """The smallest ``t`` whose validation error is within ``tolerance`` points of ``reference``.

    If no ``t`` is, the one with the lowest validation error (the smaller on ties).

    Parameters
    ----------
    points : iterable of SweepPoint
        One filter's sweep.
    reference : float
        The validation error to stay close to (the dense baseline's), in percent.
    tolerance : float
        Percentage points allowed above ``reference``.

    Raises
    ------
    WeightcodecError
        If ``points`` is empty.

    Examples
    --------
    >>> p = lambda t, e: SweepPoint("bloomier", t, 0, 0, 0.0, e, e, e)
    >>> choose_t([p(4, 3.0), p(6, 1.05), p(8, 0.98)], reference=1.0, tolerance=0.1)
    6
    >>> choose_t([p(4, 3.0), p(6, 1.5), p(8, 1.5)], reference=1.0, tolerance=0.1)
    6
    """
    points = sorted(points, key=lambda p: p.t)
    if not points:
        raise WeightcodecError("choose_t: the sweep has no points (no t in t_values holds the clusters)")
    within = [p.t for p in points if p.valid_error <= reference + tolerance]
    if within:
        return within[0]
    return min(points, key=lambda p: (p.valid_error, p.t)).t


#: What the sweep holds ``t`` to, from (dense baseline's, unencoded model's) validation error.
REFERENCES: dict[str, Callable[[float, float], float]] = {
    "baseline": lambda baseline, unencoded: baseline,
    "unencoded": lambda baseline, unencoded: unencoded,
}
