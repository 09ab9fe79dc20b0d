"""The smallest file at a requested error: per-layer choices made on validation, greedily.

Given an error budget on the *validation* split, :func:`search` chooses for every weight its
sparsity, its number of shared values ``K`` and its encoding, and for every other tensor
(biases) how it is stored, always keeping the choice with the fewest real bytes (measured by
the real encoders) whose validation error stays within the step's allowance. It only orders the
steps of :mod:`.steps` (the same ones Deep Compression and Weightless use)::

    baseline
      -> prune levels: every weight pruned together to the next level of its own sparsity
         schedule (dynamic network surgery or magnitude, then a cut to exactly the level and
         retraining); the last level within the pruning allowance is kept
      -> for each weight, in network order:
           K:        k-means + centroid fine-tuning (later layers retrain too) with K = 2**bits,
                     smallest K first; the first within the layer's allowance is kept
           encoding: the deep codec with each entropy coder (lossless: the smaller wins), and a
                     retrieval filter at each t where it is smaller still; a filter is tried
                     (the layer replaced by what it decodes, false positives included, the
                     later layers retrained around them) from the largest such t down, while
                     the error stays within the allowance
           freeze the layer
      -> every other tensor (biases), largest first: clustered (deep codec), float16 or raw,
         fewest bytes first; the first within the budget is kept (no retraining)
      -> file; read back, decoded, checked equal to the searched model, evaluated on test

**Budgets.** The user's target error ``E`` (percent) is turned into a validation budget
``E - margin_se * SE`` where ``SE = 100 sqrt(p (1 - p) / n_valid)`` at ``p = E / 100``: a choice
passes only with a margin over the validation split's noise, so that the test error, reported
and never used, lands at or under ``E`` more often than not. The slack between the pruned
model's error and the budget is shared out: the pruning step may use ``prune_share`` of the
slack over the baseline; weight ``j`` (network order) may reach the pruned error plus the slack
times the share of the non-zeros up to and including ``j``, plus one standard error of noise
(never above the budget); the biases may use the whole budget. A weight's step that starts
over its allowance (the pruning alone spent more) may end within one standard error of the
error it found (:func:`_step_allowance`); the biases, over the budget, may not make it worse.

Everything the search looked at (every level, every ``K``, every encoding tried, with its bytes
and validation error) is returned in the trace, with the settings (:data:`.settings.AUTO`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Collection, Mapping, Protocol

import torch
from torch import nn

from .. import container
from ..errors import WeightcodecError
from ..simplify import cluster, prune
from ..tensors import encode_tensor
from .data import Mnist
from .models import count_parameters
from .settings import AUTO, AutoSettings, LayerPlan, quick_auto
from .steps import (
    FLOAT32_BYTES,
    PRUNERS,
    StageTimer,
    check_same_model,
    cluster_and_finetune,
    encode_and_measure,
    errors,
    freeze_,
    layer_report,
    load_decoded,
    mask_,
    module_of,
    nonzero_fraction,
    prune_all,
    retrain_after,
    splits_of,
    unmask_,
    usable_t,
)
from .training import ArrayLoader, TrainConfig, evaluate, train_baseline, train_loader

__all__ = ["standard_error", "validation_budget", "Training", "LoaderTraining", "Problem", "search", "run", "run_reproduce"]

PERCENT = 100.0


def standard_error(error: float, n: int) -> float:
    """Standard error, in percentage points, of an error rate of ``error`` percent measured on ``n`` images.

    Examples
    --------
    >>> round(standard_error(1.0, 10_000), 3)
    0.099
    """
    p = error / PERCENT
    return PERCENT * math.sqrt(p * (1 - p) / n)


def validation_budget(target: float, n_valid: int, margin_se: float) -> float:
    """The validation error a choice may reach: ``target`` less ``margin_se`` standard errors."""
    return target - margin_se * standard_error(target, n_valid)


class Training(Protocol):
    """The three ways the search retrains the model (each leaves it as its step says)."""

    def prune(self, model: nn.Module, plans: Mapping[str, LayerPlan], level: int) -> None:
        """Prune each planned weight to its plan's sparsity and retrain; the masks stay on, fixed."""

    def finetune(self, model: nn.Module, plans: Mapping[str, LayerPlan]) -> None:
        """Cluster each planned weight to its plan's ``K``, retrain the centroids, fix them."""

    def retrain_after(self, model: nn.Module, name: str, desc: str) -> None:
        """Retrain only the layers after the one holding ``name``."""


@dataclass
class LoaderTraining:
    """:class:`Training` by the pipeline's own loop (:func:`.training.train`), with the settings' recipes.

    Attributes
    ----------
    settings : AutoSettings
        ``pruning``, ``prune`` and ``cut_epochs`` for the levels, ``finetune`` and ``init`` for
        the clusters, ``sweep`` for the retraining after a layer.
    loader : callable
        ``loader(config, offset)``: shuffled training batches for ``config`` (its subset, batch
        size, augmentation), seeded with the run's seed plus ``offset``.
    seed : int
    progress : bool
    """

    settings: AutoSettings
    loader: Callable[[TrainConfig, int], ArrayLoader]
    seed: int = 0
    progress: bool = True

    def prune(self, model: nn.Module, plans: Mapping[str, LayerPlan], level: int) -> None:
        s = self.settings
        prune_all(model, plans, s.pruning, s.prune, self.loader(s.prune, 10 * level), cut_epochs=s.cut_epochs,
                  seed=self.seed + 10 * level, progress=self.progress)  # fmt: skip

    def finetune(self, model: nn.Module, plans: Mapping[str, LayerPlan]) -> None:
        s = self.settings
        cluster_and_finetune(model, plans, s.finetune, self.loader(s.finetune, 1), init=s.init, seed=self.seed,
                             progress=self.progress)  # fmt: skip

    def retrain_after(self, model: nn.Module, name: str, desc: str) -> None:
        s = self.settings
        retrain_after(model, name, s.sweep, self.loader(s.sweep, 2), seed=self.seed, progress=self.progress, desc=desc)


@dataclass
class Problem:
    """What the search needs from the task: a way to retrain and the validation error.

    Attributes
    ----------
    training : Training
        :class:`LoaderTraining` on MNIST; a user's training hook for ``weightcodec compress
        --target-error`` (:mod:`.auto_model`).
    valid_error : callable
        ``valid_error(model)``: the model's validation error, in percent.
    n_valid : int
        Validation examples (sets the standard error of the budget).
    """

    training: Training
    valid_error: Callable[[nn.Module], float]
    n_valid: int


@dataclass
class _Search:
    """The state shared by the steps: the model, the problem, the settings and the trace."""

    model: nn.Module
    problem: Problem
    settings: AutoSettings
    seed: int
    progress: bool
    trace: dict = field(default_factory=dict)
    timer: StageTimer = field(default_factory=StageTimer)

    def valid(self) -> float:
        return self.problem.valid_error(self.model)


# ----------------------------------------------------------------------------- snapshots


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    """The values of weight ``name`` as the forward pass sees them (masked or not)."""
    return getattr(module_of(model, name), name.rpartition(".")[2]).detach()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _restore_(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` (a :func:`_snapshot`), first putting back any fixed mask it holds that a trial removed."""
    for key, value in state.items():
        if key.endswith("_mask"):
            name = key.removesuffix("_mask")
            module, weight_name = module_of(model, name), name.rpartition(".")[2]
            if not prune.is_pruned(module, weight_name):
                prune.prune_(module, weight_name, mask=value.bool())
    model.load_state_dict(state)


# ----------------------------------------------------------------------------- the steps


def _step_allowance(share: float, before: float, noise: float) -> float:
    """The error a weight's step may reach: its ``share``, or ``before`` plus one ``noise`` if it starts over it.

    A step that starts over its share (earlier steps spent more) would otherwise have to beat
    the model it found, which validation noise of one standard error decides as often as any
    real difference; it may instead stay within that noise of where it started.

    Examples
    --------
    >>> _step_allowance(1.5, 1.2, 0.1), _step_allowance(1.5, 1.9, 0.1)
    (1.5, 2.0)
    """
    return share if before <= share else before + noise


def _prune_levels(search: _Search, names: list[str], allowance: float) -> dict[str, LayerPlan]:
    """Prune level after level; keep the last level within ``allowance`` (the first one at least).

    Returns the kept level's plans; the model is left under fixed masks at exactly them.
    """
    settings = search.settings
    kept, levels = None, []
    for index, level in enumerate(settings.levels):
        plans = {name: LayerPlan(level[name], max(settings.bits)) for name in names}
        search.problem.training.prune(search.model, plans, index)
        unmask_(search.model, plans)
        error = search.valid()
        levels.append({"level": index, "sparsity": dict(level), "valid_error": error})
        search.timer.lap(f"prune level {index}")
        if error > allowance and kept is not None:
            break
        kept = (plans, _snapshot(search.model), index)
        if error > allowance:
            break
    plans, state, index = kept
    search.model.load_state_dict(state)
    mask_(search.model, plans)
    search.trace["prune"] = {"allowance": allowance, "levels": levels, "kept_level": index}
    return plans


def _choose_clusters(search: _Search, name: str, sparsity: float, allowance: float) -> dict:
    """The smallest ``K = 2**bits`` whose clustering (with fine-tuning) keeps the error within ``allowance``.

    If none does, the largest ``K`` is kept (and the trace says it was over). The layer is left
    clustered; later layers have retrained during the fine-tuning.
    """
    settings = search.settings
    start, tried = _snapshot(search.model), []
    candidates = sorted(settings.bits)
    for bits in candidates:
        _restore_(search.model, start)
        search.problem.training.finetune(search.model, {name: LayerPlan(sparsity, bits)})
        tried.append({"bits": bits, "valid_error": search.valid()})
        if tried[-1]["valid_error"] <= allowance:
            break
    search.timer.lap(f"clusters {name}")
    last = tried[-1]
    return {"allowance": allowance, "tried": tried, "bits": last["bits"], "within": last["valid_error"] <= allowance}


def _deep_records(name: str, tensor: torch.Tensor, settings: AutoSettings) -> list[container.TensorRecord]:
    """``tensor`` (already clustered) by the deep codec with each entropy coder of ``settings``."""
    return [encode_tensor(name, tensor, "deep", index_bits=settings.index_bits, entropy=e) for e in settings.entropies]


def _choose_encoding(search: _Search, name: str, allowance: float) -> tuple[container.TensorRecord, dict]:
    """The deep codec's smaller record, or a filter's where it is smaller and the error stays within ``allowance``.

    Filters are tried from the largest ``t`` that beats the deep codec down (fewest false
    positives first), at most ``settings.filter_trials`` of them, each with the later layers
    retrained around its false positives; the first that fails ends the trials.
    """
    settings = search.settings
    weight = search.model.get_parameter(name).detach().clone()
    deep = _deep_records(name, weight, settings)
    best = min(deep, key=lambda r: r.nbytes)
    measured = [
        encode_and_measure(name, weight, t=t, filter=f, seed=search.seed)
        for f in settings.filters
        for t in usable_t(settings.t_values, weight)
    ]
    smaller = sorted((m for m in measured if m[0].nbytes < best.nbytes), key=lambda m: (-m[2].t, m[0].nbytes))
    start, tried = _snapshot(search.model), []
    for record, decoded, encoding in smaller[: settings.filter_trials]:
        with torch.no_grad():
            search.model.get_parameter(name).copy_(decoded)
        search.problem.training.retrain_after(search.model, name, f"retrain after {name} ({encoding.filter}, t={encoding.t})")
        tried.append({**asdict(encoding), "valid_error": search.valid()})
        if tried[-1]["valid_error"] > allowance:
            _restore_(search.model, start)
            break
        best, start = record, _snapshot(search.model)
    search.timer.lap(f"encoding {name}")
    figures = {
        "deep_bytes": {r.encoded.meta["entropy"]: r.nbytes for r in deep},
        "filters_smaller_than_deep": [asdict(m[2]) for m in smaller],
        "filter_trials": tried,
        "codec": best.encoded.codec,
        "bytes": best.nbytes,
    }
    return best, figures


def _small_candidates(name: str, tensor: torch.Tensor, settings: AutoSettings, seed: int):
    """(record, values the file gives back) for every way of storing a small tensor, fewest bytes first."""
    half = tensor.half()
    candidates = [(encode_tensor(name, tensor, "raw"), tensor), (encode_tensor(name, half, "raw"), half.float())]
    distinct = int(torch.unique(tensor[tensor != 0]).numel())
    for bits in settings.bias_bits:
        if 2**bits < distinct:
            values = cluster.quantize(tensor, 2**bits, init=settings.init, seed=seed)
            candidates += [(record, values) for record in _deep_records(name, values, settings)]
    return sorted(candidates, key=lambda c: c[0].nbytes)


def _choose_small(search: _Search, name: str, allowance: float) -> tuple[container.TensorRecord, dict]:
    """The fewest-bytes storage of a bias (or any small tensor) whose error stays within ``allowance``.

    Raw float32 is lossless, so it is always acceptable; nothing is retrained.
    """
    original = search.model.state_dict()[name].clone()
    tried = []
    for record, values in _small_candidates(name, original, search.settings, search.seed):
        with torch.no_grad():
            search.model.state_dict()[name].copy_(values)
        tried.append({"codec": record.encoded.codec, "meta": record.encoded.meta, "bytes": record.nbytes,
                      "valid_error": search.valid()})  # fmt: skip
        if tried[-1]["valid_error"] <= allowance or record.encoded.meta == {"dtype": "<f4"}:
            return record, {"allowance": allowance, "tried": tried, "bytes": record.nbytes}
    raise WeightcodecError(f"{name}: no storage fits, not even raw float32")  # raw is always among the candidates


# ----------------------------------------------------------------------------- the search


def search(
    model: nn.Module,
    settings: AutoSettings,
    problem: Problem,
    *,
    exact: Collection[str] = (),
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[container.TensorRecord], dict]:
    """Choose, tensor by tensor, the smallest storage of ``model`` within the validation budget.

    ``model`` (trained) is simplified in place: afterwards it holds exactly the weights the
    records give back. Randomness comes from ``seed`` (data order, k-means, filter hashes).

    Parameters
    ----------
    model : torch.nn.Module
        Its weights named in ``settings.levels`` are compressed; every other tensor is a small
        tensor (:func:`_choose_small`).
    settings : AutoSettings
    problem : Problem
        How to retrain, and the validation error.
    exact : collection of str
        Tensors stored raw as they are, never searched (a recipe's ``raw`` rules).

    Returns
    -------
    records : list of TensorRecord
        One per ``model.state_dict()`` entry, in its order: what the file holds.
    trace : dict
        ``budget`` (target, standard error, validation budget), ``baseline_valid_error``,
        ``prune`` (every level tried), ``layers`` (per weight: sparsity, ``K`` tried, encodings
        measured and tried), ``small`` (per other tensor: storages tried), ``stage_seconds``.

    Raises
    ------
    WeightcodecError
        If a level names a weight the model does not have, or names differ between levels, or
        ``settings.pruning`` is unknown (all problems listed).
    """
    order = list(model.state_dict())
    _check_settings(settings, order)
    names = [name for name in order if name in settings.levels[0]]
    state = _Search(model, problem, settings, seed, progress)
    baseline = state.valid()
    budget = validation_budget(settings.target_error, problem.n_valid, settings.margin_se)
    noise = standard_error(settings.target_error, problem.n_valid)
    state.trace.update(budget={"target_error": settings.target_error, "standard_error": noise, "valid_budget": budget},
                       baseline_valid_error=baseline)  # fmt: skip
    state.timer.lap("baseline")

    plans = _prune_levels(state, names, baseline + settings.prune_share * max(budget - baseline, 0.0))
    pruned = state.valid()
    nonzeros = {name: int(torch.count_nonzero(_weight(model, name))) for name in names}
    records, layers, seen = {}, {}, 0
    for name in names:
        seen += nonzeros[name]
        share = min(budget, pruned + max(budget - pruned, 0.0) * seen / max(sum(nonzeros.values()), 1) + noise)
        before = state.valid()
        allowance = _step_allowance(share, before, noise)
        clusters = {"valid_error_before": before, **_choose_clusters(state, name, plans[name].sparsity, allowance)}
        records[name], encoding = _choose_encoding(state, name, allowance)
        freeze_(model, [name])
        layers[name] = {"sparsity": 1 - nonzeros[name] / model.get_parameter(name).numel(), "nonzeros": nonzeros[name],
                        "clusters": clusters, "encoding": encoding, "valid_error": state.valid()}  # fmt: skip
    small = {}
    records.update({name: encode_tensor(name, model.state_dict()[name], "raw") for name in exact})
    for name in sorted((n for n in model.state_dict() if n not in records), key=lambda n: -model.state_dict()[n].numel()):
        records[name], small[name] = _choose_small(state, name, max(budget, state.valid()))
    state.timer.lap("small tensors")
    state.trace.update(pruned_valid_error=pruned, layers=layers, small=small, stage_seconds=state.timer.laps)
    return [records[name] for name in model.state_dict()], state.trace


def _check_settings(settings: AutoSettings, order: list[str]) -> None:
    problems = []
    if not settings.levels:
        problems.append("no pruning level")
    names = set(settings.levels[0]) if settings.levels else set()
    problems += [
        f"level {i} names {sorted(level)}, level 0 {sorted(names)}"
        for i, level in enumerate(settings.levels)
        if set(level) != names
    ]
    problems += [f"unknown weight {name!r}" for name in sorted(names) if name not in order]
    if settings.pruning not in PRUNERS:
        problems.append(f"unknown pruning {settings.pruning!r} (choose one of {sorted(PRUNERS)})")
    if not settings.bits:
        problems.append("no bits per code to try")
    if problems:
        raise WeightcodecError(f"auto settings do not fit the model (weights {order}): {'; '.join(problems)}")


# ----------------------------------------------------------------------------- on a LeNet


def run(
    model_name: str,
    mnist: Mnist,
    settings: AutoSettings,
    out_path: Path,
    *,
    seed: int = 0,
    progress: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> dict:
    """:func:`search` on a LeNet trained on MNIST; write the file, read it back, evaluate it.

    Returns
    -------
    dict
        ``baseline_test_error``, ``baseline_valid_error``, ``test_error`` and ``valid_error``
        of the model decoded from the file, ``original_bytes``, ``file_bytes``,
        ``header_bytes``, ``ratio``, ``weights_nonzero_fraction``, ``layers``
        (:func:`.steps.layer_report`), ``choices`` (per tensor: codec, bytes, and for weights
        sparsity and ``K``), ``search`` (the trace), ``stage_seconds`` and ``settings``.

    Raises
    ------
    WeightcodecError
        As :func:`search`, or if the model decoded from the file differs from the searched one.
    """
    splits = splits_of(mnist)
    model = train_baseline(model_name, mnist, settings.deep.baseline, seed=seed, progress=progress)
    baseline = errors(model, splits)
    problem = Problem(
        training=LoaderTraining(settings, lambda config, offset: train_loader(mnist, config, seed=seed + offset), seed,
                                progress),  # fmt: skip
        valid_error=lambda m: evaluate(m, splits.valid),
        n_valid=len(mnist.y_valid),
    )
    records, trace = search(model, settings, problem, seed=seed, progress=progress)
    pipeline = errors(model, splits)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    file_bytes = container.write(out_path, records, metadata)
    decoded, wcz = load_decoded(model_name, out_path)
    final = errors(decoded, splits)
    check_same_model(model, decoded, pipeline, final)
    original_bytes = FLOAT32_BYTES * count_parameters(decoded)
    return {
        "baseline_test_error": baseline["test_error"],
        "baseline_valid_error": baseline["valid_error"],
        "test_error": final["test_error"],
        "valid_error": final["valid_error"],
        "target_error": settings.target_error,
        "valid_budget": trace["budget"]["valid_budget"],
        "original_bytes": original_bytes,
        "file_bytes": file_bytes,
        "header_bytes": wcz.header_bytes,
        "ratio": original_bytes / file_bytes,
        "weights_nonzero_fraction": nonzero_fraction(decoded, trace["layers"]),
        "layers": layer_report(wcz),
        "choices": _choices(wcz, trace),
        "search": trace,
        "stage_seconds": trace["stage_seconds"],
        "settings": json.loads(json.dumps(asdict(settings))),  # tuples as lists, as the JSON file has them
    }


def _choices(wcz: container.WczFile, trace: dict) -> list[dict]:
    """Per tensor, in file order: what was chosen (codec and its parameters, bytes; for weights sparsity and K)."""
    rows = []
    for record in wcz.records:
        row = {"name": record.name, "codec": record.encoded.codec, "bytes": record.nbytes, "dtype": record.dtype,
               "meta": {k: v for k, v in record.encoded.meta.items() if isinstance(v, (int, float, str))}}  # fmt: skip
        layer = trace["layers"].get(record.name)
        if layer is not None:
            clusters = 2 ** layer["clusters"]["bits"]
            row.update(sparsity=layer["sparsity"], clusters=clusters, valid_error_after=layer["valid_error"])
        rows.append(row)
    return rows


def run_reproduce(model: str, mnist: Mnist, out_path: Path, *, quick: bool, seed: int, progress: bool) -> dict:
    """``reproduce(model, "auto")``: :func:`run` with :data:`.settings.AUTO` (or its quick budget)."""
    settings = quick_auto(AUTO[model]) if quick else AUTO[model]
    metadata = {"model": model, "method": "auto", "seed": str(seed)}
    return run(model, mnist, settings, out_path, seed=seed, progress=progress, metadata=metadata)
