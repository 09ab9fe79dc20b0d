"""The search over a filter's cell width ``t`` for one layer: encode, retrain around it, choose.

A retrieval filter stores a layer's codes in ``t``-bit cells; each zero reads back as a false
positive with probability ``K / 2**t``. :func:`sweep_t` measures every ``t`` as the network
would see it (the decoded layer in place, the later layers briefly retrained around its
errors), and :func:`choose_t` keeps the smallest ``t`` whose *validation* error stays within a
tolerance of a reference (:data:`REFERENCES`); the test split is only reported.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .. import container
from ..errors import WeightcodecError
from .steps import Splits, encode_and_measure, module_of, retrain_after, usable_t
from .training import ArrayLoader, TrainConfig, evaluate

__all__ = ["SweepPoint", "sweep_t", "choose_t", "REFERENCES"]


@dataclass(frozen=True)
class SweepPoint:
    """One ``t`` of the sweep: the encoding, then errors (percent) around the retraining.

    ``valid_error_encoded`` is measured with the decoded layer in place, before retraining the
    later layers; ``valid_error`` and ``test_error`` after.
    """

    filter: str
    t: int
    bytes: int
    false_positives: int
    expected_false_positives: float
    valid_error_encoded: float
    valid_error: float
    test_error: float


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
    progress: bool = True,
) -> tuple[list[SweepPoint], dict[int, tuple[container.TensorRecord, dict]]]:
    """For each ``t``: encode ``name`` in ``filter``, load what it decodes, retrain the later layers.

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
    for t in usable_t(t_values, clustered):
        record, decoded, encoding = encode_and_measure(name, clustered, t=t, filter=filter, seed=seed)
        model.load_state_dict(start)
        with torch.no_grad():
            getattr(module, weight_name).copy_(decoded)
        encoded_error = evaluate(model, splits.valid)
        retrain_after(model, name, config, copy.copy(loader), seed=seed, progress=progress,
                      desc=f"retrain after {name} ({filter}, t={t})")  # fmt: skip
        points.append(SweepPoint(
            **asdict(encoding),
            valid_error_encoded=encoded_error,
            valid_error=evaluate(model, splits.valid),
            test_error=evaluate(model, splits.test),
        ))  # fmt: skip
        kept[t] = (record, copy.deepcopy(model.state_dict()))
    model.load_state_dict(start)
    return points, kept


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
