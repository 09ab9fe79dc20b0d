"""Calibration statistics: how much each weight's error matters, from a few unlabeled inputs.

A Linear layer ``y = W x`` turns a weight error ``ΔW`` into an output error whose expected
energy per token is ``sum_ij ΔW_ij^2 E[x_j^2]`` (cross terms dropped: the diagonal of ``X^T X``,
as AWQ and the diagonal of GPTQ's Hessian use it). An embedding table's row ``r`` only matters
when token ``r`` is looked up: its error costs ``freq(r) * |ΔE_r|^2`` per token. Both are
*importances* ``h`` of the weights, in the same unit (squared output error per token), constant
along one axis of the weight matrix:

    Linear weight (out, in)   h has shape (1, in)   E[x_j^2] over every token seen
    Embedding (V, d)          h has shape (V, 1)    the fraction of tokens that looked row r up

:func:`calibration_statistics` runs the model on the inputs with forward hooks and returns them
keyed by state_dict name; :func:`weightcodec.encode_to_size` then minimises ``sum h (w - q)^2``
instead of the plain squared error, with one quantization step per input column (Linear) or
per row (Embedding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..errors import EncodeError

__all__ = ["calibration_statistics"]


def calibration_statistics(model: nn.Module, inputs: Iterable[Any], *, full: bool = False) -> dict[str, np.ndarray]:
    """Input second moments of every Linear and row frequencies of every Embedding, by name.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode under ``torch.no_grad``; not modified.
    inputs : iterable
        Batches: a mapping (a dict, a tokenizer's ``BatchEncoding``) is passed as
        ``model(**batch)``, a tuple or list as ``model(*batch)``, anything else as ``model(batch)``.
    full : bool
        For a Linear, return the whole ``E[x x^T]`` (in_features x in_features) instead of its
        diagonal: :func:`weightcodec.encode_to_size` then also compensates rounding errors
        across columns, GPTQ-style (:mod:`weightcodec.codecs.compensate`).

    Returns
    -------
    dict of str to ndarray of float64
        ``"<module>.weight"`` -> importance of shape (1, in_features) for a Linear ((in_features,
        in_features) with ``full``), (num_embeddings, 1) for an Embedding (see the module
        docstring). Modules that saw no input are left out.

    Raises
    ------
    EncodeError
        If ``inputs`` is empty.

    Examples
    --------
    >>> net = nn.Sequential(nn.Embedding(4, 2), nn.Linear(2, 3))
    >>> stats = calibration_statistics(net, [torch.tensor([0, 0, 1])])
    >>> stats["0.weight"].ravel().round(3).tolist(), stats["1.weight"].shape
    ([0.667, 0.333, 0.0, 0.0], (1, 2))
    """
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    handles = []

    def linear_hook(name):
        def hook(module, args, output):
            x = args[0].detach().to(torch.float64).reshape(-1, module.in_features)
            moment = (x.T @ x).numpy() if full else (x * x).sum(0).numpy().reshape(1, -1)
            _add(sums, counts, name, moment, x.shape[0])
        return hook

    def embedding_hook(name):
        def hook(module, args, output):
            index = args[0].detach().reshape(-1)
            frequency = torch.bincount(index, minlength=module.num_embeddings).to(torch.float64)
            _add(sums, counts, name, frequency.numpy().reshape(-1, 1), index.numel())
        return hook

    for prefix, module in model.named_modules():
        name = f"{prefix}.weight" if prefix else "weight"
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook(name)))
        elif isinstance(module, nn.Embedding):
            handles.append(module.register_forward_hook(embedding_hook(name)))
    was_training = model.training
    batches = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in inputs:
                _call(model, batch)
                batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if batches == 0:
        raise EncodeError("calibration inputs are empty; give at least one batch")
    return {name: total / counts[name] for name, total in sums.items()}


def _add(sums: dict, counts: dict, name: str, total: np.ndarray, count: int) -> None:
    sums[name] = sums.get(name, 0) + total
    counts[name] = counts.get(name, 0) + count


def _call(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, Mapping):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)
