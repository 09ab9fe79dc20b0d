"""The steps every pipeline is made of: prune, cluster, encode a layer, freeze, retrain, read back.

Deep Compression (:mod:`.deep_compression`), Weightless (:mod:`.weightless`) and the automatic
search (:mod:`.auto`) are sequences of these steps; none of them repeats one::

    prune_all        magnitude rounds (Han et al. 2015) or dynamic network surgery (Guo et al.
                     2016), retraining; masks stay fixed on the weights (mask_ / unmask_)
    cluster_and_finetune   k-means on each layer's non-zeros, fine-tune the centroids, fix them
                     (share_ / fix_shared_ around any training)
    encode_layer / decode_layer / encode_and_measure   one weight in a retrieval filter, and
                     what the file gives back (false positives included)
    refine_stored_centroids   fine-tune a filter's centroids and the later layers, false
                     positives in place, and re-encode (same table, new codebook)
    freeze_          a finished layer is never trained again
    retrain_after    train only the layers after one layer
    load_decoded / layer_report   read a written file into a fresh model; bytes per tensor

A step takes the model, the plans (parameter name -> :class:`~.settings.LayerPlan`), the
:class:`~.training.TrainConfig` of its training and a loader; randomness comes in as ``seed``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple

import numpy as np
import torch
from torch import nn

from .. import container
from ..codecs import get_codec
from ..codecs import weightless as weightless_codec
from ..errors import WeightcodecError
from ..simplify import cluster, prune
from ..tensors import decode_file, encode_tensor
from .data import Mnist
from .models import build_model
from .settings import LayerPlan
from .training import ArrayLoader, TrainConfig, evaluate, layers_after, train

__all__ = [
    "FLOAT32_BYTES",
    "EVAL_BATCH",
    "DNS_EVERY",
    "Splits",
    "splits_of",
    "errors",
    "StageTimer",
    "module_of",
    "freeze_",
    "mask_",
    "unmask_",
    "round_sparsities",
    "prune_magnitude",
    "prune_dns",
    "PRUNERS",
    "prune_all",
    "cluster_and_finetune",
    "share_",
    "fix_shared_",
    "retrain_after",
    "encode_layer",
    "decode_layer",
    "Encoding",
    "encode_and_measure",
    "usable_t",
    "refine_stored_centroids",
    "load_decoded",
    "layer_report",
    "nonzero_fraction",
    "check_same_model",
]

FLOAT32_BYTES = 4
EVAL_BATCH = 1000
DNS_EVERY = 10  # optimiser steps between two DNS mask updates (Guo et al. update stochastically, ~this often)


# ----------------------------------------------------------------------------- evaluation and timing


class Splits(NamedTuple):
    """The evaluation sets: validation (choices) and test (reports)."""

    valid: ArrayLoader
    test: ArrayLoader


def splits_of(mnist: Mnist) -> Splits:
    """The validation and test loaders of ``mnist`` (in order, :data:`EVAL_BATCH` images a batch)."""
    return Splits(
        ArrayLoader(mnist.x_valid, mnist.y_valid, batch_size=EVAL_BATCH),
        ArrayLoader(mnist.x_test, mnist.y_test, batch_size=EVAL_BATCH),
    )


def errors(model: nn.Module, splits: Splits) -> dict[str, float]:
    """``valid_error`` and ``test_error`` of ``model``, in percent."""
    return {"valid_error": evaluate(model, splits.valid), "test_error": evaluate(model, splits.test)}


class StageTimer:
    """Seconds per named stage: :meth:`lap` records the time since the previous lap in ``laps``."""

    def __init__(self) -> None:
        self.start, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.start, 2)
        self.start = now


# ----------------------------------------------------------------------------- masks and freezing


def module_of(model: nn.Module, name: str) -> nn.Module:
    """The module holding parameter ``name`` (``"fc1.weight"`` -> ``model.fc1``)."""
    return model.get_submodule(name.rpartition(".")[0])


def freeze_(model: nn.Module, names: Iterable[str]) -> None:
    """Freeze the modules holding the parameters ``names`` (weights and biases alike).

    Frozen parameters have ``requires_grad=False``, so :func:`~.training.train` never updates
    them (it only toggles the parameters it froze itself). Weightless freezes a layer once its
    filter is built; a finished deep layer is frozen so that it stays clustered.
    """
    for name in names:
        for param in module_of(model, name).parameters():
            param.requires_grad_(False)


def mask_(model: nn.Module, plans: Mapping[str, LayerPlan]) -> None:
    """Put each planned weight under a fixed mask, at its plan's sparsity or sparser.

    A weight already at least as sparse as its plan keeps exactly its non-zeros; a denser one
    (DNS stops near its target, not on it) loses its smallest magnitudes down to the plan.
    """
    for name, plan in plans.items():
        module, weight_name = module_of(model, name), name.rpartition(".")[2]
        weight = getattr(module, weight_name)
        sparsity = max(plan.sparsity, prune.sparsity_of(weight))
        prune.prune_(module, weight_name, mask=prune.magnitude_mask(weight, sparsity=sparsity))


def unmask_(model: nn.Module, names: Iterable[str]) -> None:
    """Make the masks of ``names`` permanent (pruned weights become plain zeros). Cannot be undone."""
    for name in names:
        module, weight_name = module_of(model, name), name.rpartition(".")[2]
        if prune.is_pruned(module, weight_name):
            prune.remove_(module, weight_name)


# ----------------------------------------------------------------------------- pruning


def round_sparsities(final: float, rounds: int) -> list[float]:
    """Sparsity after each of ``rounds`` pruning rounds: the density shrinks geometrically.

    Examples
    --------
    >>> [round(s, 3) for s in round_sparsities(0.99, 2)]
    [0.9, 0.99]
    """
    return [1 - (1 - final) ** (r / rounds) for r in range(1, rounds + 1)]


def prune_magnitude(
    model: nn.Module,
    plans: Mapping[str, LayerPlan],
    config: TrainConfig,
    loader: ArrayLoader,
    *,
    rounds: int,
    cut_epochs: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Deep Compression's rounds: magnitude-prune every planned weight, retrain with ``config``, repeat.

    Round ``r`` prunes to density ``d**(r / rounds)`` (:func:`round_sparsities`), masks fixed
    during retraining; the masks are made permanent at the end. ``cut_epochs`` is unused (the
    last round already ends at exactly the plan), accepted so that every pruner has one signature.
    """
    schedules = {name: round_sparsities(plan.sparsity, rounds) for name, plan in plans.items()}
    for r in range(rounds):
        prune.prune_model_(model, {name: s[r] for name, s in schedules.items()})
        train(model, loader, config, seed=seed + r, progress=progress, desc=f"prune round {r + 1}")
    prune.remove_model_(model)


def prune_dns(
    model: nn.Module,
    plans: Mapping[str, LayerPlan],
    config: TrainConfig,
    loader: ArrayLoader,
    *,
    rounds: int = 1,
    cut_epochs: int,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Dynamic network surgery towards each plan's sparsity, then a magnitude cut to exactly it.

    DNS trains with ``config`` and updates its masks every :data:`DNS_EVERY` steps. It fixes
    its thresholds from the weights it starts with, so as the weights move the final sparsity
    only approaches the target; the cut (:func:`mask_`) and ``cut_epochs`` of retraining with
    the masks fixed make it exact, as on the magnitude path. ``rounds`` is unused.
    """
    surgery = prune.dns_model_(model, {name: plan.sparsity for name, plan in plans.items()})
    modules = [(module_of(model, name), name.rpartition(".")[2]) for name in surgery]

    def update(step: int) -> None:
        if step % DNS_EVERY == 0:
            for module, weight_name in modules:
                prune.dns_update_(module, weight_name)

    train(model, loader, config, seed=seed, on_step=update, progress=progress, desc="DNS")
    prune.remove_model_(model)
    mask_(model, plans)
    train(model, loader, config.scaled(epochs=cut_epochs), seed=seed + 1, progress=progress, desc="retrain after the cut")
    prune.remove_model_(model)


Pruner = Callable[..., None]
PRUNERS: dict[str, Pruner] = {"magnitude": prune_magnitude, "dns": prune_dns}


def prune_all(
    model: nn.Module,
    plans: Mapping[str, LayerPlan],
    pruning: str,
    config: TrainConfig,
    loader: ArrayLoader,
    *,
    rounds: int = 1,
    cut_epochs: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Prune every planned weight of ``model`` together with the pruner ``pruning``, retraining.

    Every unfrozen parameter is retrained with ``config`` (``rounds`` magnitude rounds, or DNS
    and ``cut_epochs`` after its cut). Each planned weight is left under a fixed mask
    (:func:`mask_`) at exactly its plan's sparsity: later training keeps its zeros until
    :func:`unmask_`.

    Raises
    ------
    WeightcodecError
        If ``pruning`` is not a key of :data:`PRUNERS` (the message lists them).
    """
    try:
        pruner = PRUNERS[pruning]
    except KeyError:
        raise WeightcodecError(f"unknown pruning {pruning!r}; choose one of {sorted(PRUNERS)}") from None
    pruner(model, plans, config, loader, rounds=rounds, cut_epochs=cut_epochs, seed=seed, progress=progress)
    mask_(model, plans)


# ----------------------------------------------------------------------------- clustering and retraining


def cluster_and_finetune(
    model: nn.Module,
    plans: Mapping[str, LayerPlan],
    config: TrainConfig,
    loader: ArrayLoader,
    *,
    init: str,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """k-means on the non-zeros of each planned weight, fine-tune the centroids, fix them.

    Deep Compression's weight sharing (§3): each layer gets ``min(2**bits, distinct non-zeros)``
    clusters with the ``init`` given (:func:`weightcodec.simplify.cluster.share_weights_`); then
    every unfrozen parameter trains with ``config``, each centroid moving by the summed gradient
    of its weights. Masks left on these weights are made permanent first; their zero patterns
    do not change.
    """
    share_(model, plans, init=init, seed=seed)
    train(model, loader, config, seed=seed, progress=progress, desc="fine-tune centroids")
    fix_shared_(model, plans)


def share_(model: nn.Module, plans: Mapping[str, LayerPlan], *, init: str, seed: int = 0) -> None:
    """Tie each planned weight's non-zeros to ``min(2**bits, distinct non-zeros)`` shared centroids (k-means).

    Masks left on these weights are made permanent first. Training moves each centroid by the
    summed gradient of its weights until :func:`fix_shared_`.
    """
    unmask_(model, plans)
    for name, plan in plans.items():
        module, weight_name = module_of(model, name), name.rpartition(".")[2]
        weight = getattr(module, weight_name).detach()
        k = min(plan.clusters, int(torch.unique(weight[weight != 0]).numel()))
        cluster.share_weights_(module, weight_name, k, init=init, seed=seed)


def fix_shared_(model: nn.Module, names: Iterable[str]) -> None:
    """Turn the shared weights of ``names`` back into plain weights holding the centroids. Cannot be undone."""
    for name in names:
        cluster.make_permanent_(module_of(model, name), name.rpartition(".")[2])


def retrain_after(
    model: nn.Module, name: str, config: TrainConfig, loader: ArrayLoader, *, seed: int = 0, progress: bool = True, desc: str = ""
) -> None:
    """Train only the layers after the one holding ``name`` (nothing if it is the last, or no epochs)."""
    later = layers_after(model, name.rpartition(".")[0])
    if later and config.epochs:
        train(model, loader, config, seed=seed, train_only=later, progress=progress, desc=desc or f"retrain after {name}")


# ----------------------------------------------------------------------------- one layer in a filter


def encode_layer(name: str, weight: torch.Tensor, *, t: int, filter: str, seed: int = 0) -> container.TensorRecord:
    """The weightless record of a pruned, clustered weight: codes in a ``filter`` of ``t``-bit cells.

    Raises
    ------
    EncodeError
        As :func:`weightcodec.codecs.weightless.encode` (e.g. ``2**t`` below the clusters).
    """
    return encode_tensor(name, weight, weightless_codec.NAME, t=t, filter=filter, seed=seed)


def decode_layer(record: container.TensorRecord) -> torch.Tensor:
    """What the file gives back for ``record``: the stored weights plus the false positives.

    Examples
    --------
    >>> w = torch.tensor([[0.0, 0.5], [-0.25, 0.0]])
    >>> decode_layer(encode_layer("w", w, t=12, filter="bloomier"))[w != 0].tolist()
    [0.5, -0.25]
    """
    codec = get_codec(record.encoded.codec)
    return torch.from_numpy(codec.decode(record.encoded.meta, record.encoded.sections, record.shape))


@dataclass(frozen=True)
class Encoding:
    """One ``(filter, t)`` encoding of a layer: its bytes and false positives (no training)."""

    filter: str
    t: int
    bytes: int
    false_positives: int
    expected_false_positives: float


def encode_and_measure(
    name: str, weight: torch.Tensor, *, t: int, filter: str, seed: int = 0
) -> tuple[container.TensorRecord, torch.Tensor, Encoding]:
    """Encode ``weight``, decode it back, and count its false positives.

    Returns
    -------
    record : TensorRecord
        What the file would hold.
    decoded : torch.Tensor
        What the file gives back (:func:`decode_layer`).
    encoding : Encoding
        Its bytes (sections), measured false positives and their expectation
        ``zeros * K / 2**t``.
    """
    record = encode_layer(name, weight, t=t, filter=filter, seed=seed)
    decoded = decode_layer(record)
    zeros = int((weight == 0).sum())
    clusters = record.encoded.meta["K"]
    encoding = Encoding(
        filter=filter,
        t=t,
        bytes=record.nbytes,
        false_positives=weightless_codec.measured_false_positives(weight.cpu().numpy(), decoded.cpu().numpy()),
        expected_false_positives=weightless_codec.expected_false_positives(clusters, t, zeros),
    )
    return record, decoded, encoding


def usable_t(t_values: Iterable[int], weight: torch.Tensor) -> list[int]:
    """The ``t`` of ``t_values`` whose ``2**t`` codes hold the layer's distinct non-zeros.

    Examples
    --------
    >>> usable_t([1, 2, 3, 8], torch.tensor([0.0, 0.5, -0.5, 0.25, 0.0]))
    [2, 3, 8]
    """
    clusters = int(torch.unique(weight[weight != 0]).numel())
    return [t for t in t_values if 2**t >= clusters]


def refine_stored_centroids(
    model: nn.Module,
    name: str,
    clustered: torch.Tensor,
    record: container.TensorRecord,
    config: TrainConfig,
    loader: ArrayLoader,
    *,
    seed: int = 0,
    progress: bool = True,
) -> tuple[container.TensorRecord, bool]:
    """Fine-tune the centroids of a filter-encoded layer and every later layer, false positives in place.

    ``model`` holds what ``record`` decodes; ``clustered`` is the layer ``record`` was encoded
    from (its non-zeros are the stored weights). Every non-zero the filter gives back (stored
    weights and false positives alike) is tied to its centroid
    (:class:`weightcodec.simplify.cluster.SharedWeights`), and the centroids, the layer's other
    parameters (its bias) and the later layers train with ``config``. The layer is then
    re-encoded with the same filter, ``t`` and seed: the codes are unchanged, so the table (and
    every false positive) is the same and only the codebook moves.

    If training reorders the centroids, the codes (hence the table and the false positives)
    would change: the model is then put back as it came and ``record`` returned.

    Returns
    -------
    record : TensorRecord
        The record of the refined layer; ``model`` holds exactly what it decodes.
    refined : bool
        False if the centroids reordered and nothing changed.

    Raises
    ------
    WeightcodecError
        If ``model`` does not hold what ``record`` decodes.
    """
    module, weight_name = module_of(model, name), name.rpartition(".")[2]
    weight = getattr(module, weight_name).detach()
    if not torch.equal(weight, decode_layer(record)):
        raise WeightcodecError(f"{name}: the model does not hold what its record decodes; load decode_layer(record) first")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    codebook = torch.from_numpy(np.frombuffer(record.encoded.sections["codebook"], dtype=np.float32).copy())
    mask = weight != 0
    codes = torch.searchsorted(codebook, weight.contiguous()).clamp(max=codebook.numel() - 1) * mask
    torch.nn.utils.parametrize.register_parametrization(
        module, weight_name, cluster.SharedWeights(codes, mask, codebook.numel()), unsafe=True
    )
    with torch.no_grad():
        module.parametrizations[weight_name].original.copy_(codebook)
    layer = name.rpartition(".")[0]
    train(model, loader, config, seed=seed, train_only=[layer, *layers_after(model, layer)], progress=progress,
          desc=f"refine {name} centroids")  # fmt: skip
    ordered = bool(torch.all(torch.diff(module.parametrizations[weight_name].original.detach()) > 0))
    cluster.make_permanent_(module, weight_name)
    if not ordered:
        model.load_state_dict(before)
        return record, False
    refined = getattr(module, weight_name).detach()
    meta = record.encoded.meta
    stored = torch.where(clustered != 0, refined, torch.zeros_like(refined))
    result = encode_layer(name, stored, t=meta["t"], filter=meta["filter"], seed=meta["seed"])
    if not torch.equal(decode_layer(result), refined):
        raise WeightcodecError(f"{name}: the refined layer did not re-encode to the same table (it never should)")
    return result, True


# ----------------------------------------------------------------------------- reading a file back


def load_decoded(model_name: str, path: Path) -> tuple[nn.Module, container.WczFile]:
    """Read ``path`` and load every tensor into a freshly built ``model_name`` (strictly)."""
    wcz = container.read(path)
    model = build_model(model_name)
    model.load_state_dict(decode_file(wcz), strict=True)
    return model.eval(), wcz


def layer_report(wcz: container.WczFile) -> list[dict]:
    """Per tensor: shape, non-zero fraction, bytes, ratio against float32, and the codec's figures."""
    rows = []
    for record in wcz.records:
        values = wcz.decode(record.name)
        numel = int(np.prod(record.shape, dtype=np.int64))
        codec = get_codec(record.encoded.codec)
        row = {
            "name": record.name,
            "shape": list(record.shape),
            "codec": record.encoded.codec,
            "nonzero_fraction": float(np.count_nonzero(values)) / max(numel, 1),
            "bytes": record.nbytes,
            "ratio": FLOAT32_BYTES * numel / max(record.nbytes, 1),
        }
        if hasattr(codec, "describe"):
            row["describe"] = codec.describe(record.encoded.meta, record.encoded.sections, record.shape)
        rows.append(row)
    return rows


def nonzero_fraction(model: nn.Module, names: Iterable[str]) -> float:
    """Non-zeros over elements, summed over the tensors ``names`` of ``model``'s state_dict."""
    state = model.state_dict()
    names = list(names)
    return sum(int(torch.count_nonzero(state[n])) for n in names) / max(sum(state[n].numel() for n in names), 1)


def check_same_model(model: nn.Module, decoded: nn.Module, pipeline: dict, final: dict) -> None:
    """What the user gets is what was measured: equal tensors, equal errors.

    Raises
    ------
    WeightcodecError
        Naming the tensors that differ and both sets of errors (it never should happen).
    """
    state, restored = model.state_dict(), decoded.state_dict()
    different = [name for name in restored if not torch.equal(state[name], restored[name])]
    if different or pipeline != final:
        raise WeightcodecError(
            f"the model decoded from the file differs from the pipeline's: tensors {different}, "
            f"errors {final} (file) vs {pipeline} (pipeline)"
        )
