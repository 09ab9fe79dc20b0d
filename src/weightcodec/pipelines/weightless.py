"""Weightless (Reagen et al., ICML 2018) end to end, from a trained LeNet to a real file.

Weightless stores a pruned, clustered layer *lossily* in a retrieval filter (a Bloomier filter
by default): the codes of the non-zero weights come back exactly, and each zero comes back as a
random centroid (a *false positive*) with probability ``K / 2**t``. The layer is then frozen
with exactly those weights and the layers after it are retrained around the errors
(Algorithm 1; docs/references.md §1.4)::

    baseline (the Deep Compression baseline, from the checkpoint cache)
      -> prune every planned layer together, retraining (magnitude rounds or DNS); each layer
         keeps a fixed mask until its own stage, so later training never revives its zeros
      -> for each stage, in network order:
           deep stage (layers not chosen):  k-means + fine-tune centroids (deep_compression),
                                            freeze those layers
           weightless stage (one layer l):  k-means on l (density init) + fine-tune centroids
                                            (for each K tried) sweep t: encode l (each seed
                                                     tried), load what the filter decodes
                                                     (false positives included), retrain the
                                                     layers after l briefly, measure the error
                                            choose (K, t) (validation split); l := decode(filter),
                                            retrain the later layers a few epochs, optionally
                                            fine-tune l's centroids with them; freeze l
      -> file: weightless tables for the chosen layers, deep codec for the others, raw biases
      -> read back, decode, load into a fresh model, evaluate: the reported test error, checked
         equal to the error of the pipeline's own model (the same weights, bit for bit)

Pruning all planned layers first, as Deep Compression does, lets every layer adapt to the
others' pruning while all of them can still move; only clustering and encoding go layer by
layer (the paper's order inside its step 1 is unconfirmed, docs/references.md §1.4).

Choosing ``t`` (:mod:`.sweep`): the stored filter (:attr:`.settings.WeightlessSettings.filter`:
Bloomier as in the paper by default, ribbon in :data:`.settings.WEIGHTLESS`) is swept over
``t_values``, each ``t`` with its brief retraining, and the smallest ``t`` whose validation
error is within ``tolerance`` points of the reference is kept (:func:`.sweep.choose_t`); the
test split is only reported. The other filters (ribbon stores the same false-positive rate in
~18 % fewer bytes than Bloomier) are measured at every ``t`` and retrained once, at the chosen
``t``. The layer is also encoded with the deep codec at the same point (pruned and clustered,
before any false positive): what the same weights cost in Deep Compression's format; and once
the file is written, the decoded weights (false positives included) are stored losslessly by
the deep codec too (:func:`deep_on_identical_weights`): the same model, the fair comparison.

The levers for a small filter at a low error (:class:`.settings.WeightlessSettings`): several
``K`` (``bits_tried``), each clustered from the same pruned layer and swept, the choice made over
every ``(K, t)``; filter seeds (``filter_seeds``: the seed decides *which* zeros become false
positives, the one of lowest validation loss is kept); a ratio floor for the layer
(``min_ratio``: only filters that small may be chosen); and, after the retraining of the later
layers, fine-tuning the stored centroids and the later layers with the false positives in place
(``refine``, :func:`.steps.refine_stored_centroids`: same table, new codebook).

This module only orders the steps (:mod:`.steps`: pruning, clustering, encoding a layer,
freezing, retraining); the settings are data (:mod:`.settings`: Deep Compression's baseline,
retraining recipes and plans for the layers not chosen, our own plans and pruning method for
the chosen ones, as the paper's Table 1 is unconfirmed, docs/references.md §1.3), and the results
page is :mod:`.report`'s.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple

import numpy as np
import torch
from torch import nn

from .. import container
from ..codecs import deep as deep_codec
from ..codecs import weightless as weightless_codec
from ..errors import WeightcodecError
from ..tensors import encode_tensor
from . import deep_compression, report
from .data import Mnist
from .models import build_model, count_parameters
from .settings import T_VALUES, WEIGHTLESS, LayerPlan, WeightlessSettings, all_layers, planned_layers, quick_weightless
from .steps import (
    FLOAT32_BYTES,
    PRUNERS,
    Splits,
    StageTimer,
    check_same_model,
    cluster_and_finetune,
    encode_and_measure,
    errors,
    freeze_,
    layer_report,
    load_decoded,
    nonzero_fraction,
    prune_all,
    refine_stored_centroids,
    retrain_after,
    splits_of,
    unmask_,
    usable_t,
)
from .sweep import REFERENCES, choose_point, sweep_t
from .training import ArrayLoader, TrainConfig, train_baseline, train_loader

__all__ = ["Stage", "stages", "encode_model", "deep_on_identical_weights", "run", "run_reproduce"]

HISTOGRAM_BINS = 64


# ----------------------------------------------------------------------------- stages


class Stage(NamedTuple):
    """A step of the layer-by-layer loop: ``method`` ("deep" or "weightless") and its layers."""

    method: str
    names: tuple[str, ...]


def stages(order: Iterable[str], encoded: Iterable[str], deep: Iterable[str]) -> list[Stage]:
    """Group the layers in network order: runs of deep layers, and each encoded layer on its own.

    Parameters
    ----------
    order : iterable of str
        Parameter names in network order (a model's ``state_dict`` order).
    encoded, deep : iterable of str
        Names encoded by Weightless, and names stored with the deep codec (an encoded name wins).
        Names in neither stay as they are (stored raw).

    Returns
    -------
    list of Stage

    Examples
    --------
    >>> stages(["c1.weight", "c2.weight", "f1.weight", "f2.weight"], ["f1.weight"], ["c1.weight", "c2.weight", "f2.weight"])
    [Stage(method='deep', names=('c1.weight', 'c2.weight')), Stage(method='weightless', names=('f1.weight',)), Stage(method='deep', names=('f2.weight',))]
    """
    encoded, deep = set(encoded), set(deep)
    result: list[Stage] = []
    for name in order:
        if name in encoded:
            result.append(Stage("weightless", (name,)))
        elif name in deep:
            if result and result[-1].method == "deep":
                result[-1] = Stage("deep", result[-1].names + (name,))
            else:
                result.append(Stage("deep", (name,)))
    return result



# ----------------------------------------------------------------------------- the two kinds of stage


@dataclass
class _Context:
    """What every stage needs: the data, the settings, seeds and the timer."""

    mnist: Mnist
    settings: WeightlessSettings
    splits: Splits
    seed: int
    progress: bool
    timer: StageTimer = field(default_factory=StageTimer)

    def loader(self, config: TrainConfig, offset: int = 0) -> ArrayLoader:
        return train_loader(self.mnist, config, seed=self.seed + offset)

    def errors(self, model: nn.Module) -> dict[str, float]:
        return errors(model, self.splits)

    def lap(self, name: str) -> None:
        self.timer.lap(name)


def _deep_stage(model: nn.Module, names: tuple[str, ...], ctx: _Context) -> dict:
    """Deep Compression's clustering step on the pruned ``names``, then freeze them."""
    plans = {name: ctx.settings.deep.layers[name] for name in names}
    cluster_and_finetune(model, plans, ctx.settings.finetune, ctx.loader(ctx.settings.finetune, 1),
                         init=ctx.settings.deep.init, seed=ctx.seed, progress=ctx.progress)  # fmt: skip
    freeze_(model, names)
    ctx.lap(f"cluster {'+'.join(names)}")
    return {"method": "deep", "names": list(names), **ctx.errors(model)}


def _weightless_stage(model: nn.Module, name: str, baseline: float, ctx: _Context) -> tuple[dict, container.TensorRecord]:
    """Algorithm 1 on one pruned layer; returns its figures and the record the file will hold.

    Each ``K`` (the plan's, then :attr:`~.settings.WeightlessSettings.bits_tried`) is clustered
    from the same pruned layer and the stored filter swept over every ``t`` with retraining
    (and filter seeds, :func:`.sweep.best_seed`); the ``(K, t)`` is chosen on validation among
    those within ``min_ratio`` (:func:`.sweep.choose_point`). The other filters are measured
    (bytes, false positives) at every ``t`` and retrained once, at the chosen ``t``. After the
    retraining of the later layers, ``refine`` fine-tunes the stored centroids with them.
    """
    settings, plan = ctx.settings, ctx.settings.layers[name]
    weight = lambda: model.get_parameter(name).detach()  # noqa: E731 (re-read: clustering replaces the Parameter)
    unmask_(model, [name])
    pruned = weight()[weight() != 0].numpy()
    start = copy.deepcopy(model.state_dict())
    max_bytes = FLOAT32_BYTES * weight().numel() / settings.min_ratio if settings.min_ratio else math.inf
    sweep = partial(sweep_t, model, name, config=settings.sweep, loader=ctx.loader(settings.sweep, 2), splits=ctx.splits,
                    seed=ctx.seed, seeds=settings.filter_seeds, max_bytes=max_bytes, progress=ctx.progress)  # fmt: skip
    tried = []
    for bits in dict.fromkeys((plan.bits, *settings.bits_tried)):
        model.load_state_dict(start)
        tried.append(_cluster_and_sweep(model, name, replace(plan, bits=bits), sweep, ctx))
        ctx.lap(f"cluster and sweep {name} K={2**bits}")
    points = [point for k in tried for point in k["points"]]
    reference = REFERENCES[settings.reference](baseline, min(k["clustered"]["valid_error"] for k in tried))
    chosen = choose_point(points, reference, settings.tolerance, max_bytes)
    kept = next(k for k in tried if k["clusters"] == chosen.clusters)
    t = chosen.t
    model.load_state_dict(kept["state"])
    clustered = weight().clone()
    alternatives = [point for f in settings.filters if f != settings.filter for point in sweep((t,), filter=f)[0]]
    record, state = kept["kept"][t]
    model.load_state_dict(state)
    steps_figures = {"swept": ctx.errors(model)}
    retrain_after(model, name, settings.retrain, ctx.loader(settings.retrain, 3), seed=ctx.seed, progress=ctx.progress)
    steps_figures["retrained"] = ctx.errors(model)
    ctx.lap(f"retrain after {name}")
    if settings.refine is not None:
        record, refined = refine_stored_centroids(model, name, clustered, record, settings.refine,
                                                  ctx.loader(settings.refine, 4), seed=ctx.seed, progress=ctx.progress)  # fmt: skip
        steps_figures["refined"] = {**ctx.errors(model), "centroids_kept_order": refined}
        ctx.lap(f"refine {name} centroids")
    freeze_(model, [name])
    counts, edges = np.histogram(pruned, bins=HISTOGRAM_BINS)
    figures = {
        "method": "weightless",
        "names": [name],
        "plan": asdict(replace(plan, bits=int(math.log2(chosen.clusters)))),
        "sparsity": 1 - pruned.size / weight().numel(),
        "clustered": kept["clustered"],
        "centroids": torch.unique(weight()[weight() != 0]).tolist(),
        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
        "deep_codec_bytes": kept["deep_codec_bytes"],
        "encodings": kept["encodings"],
        "reference_valid_error": reference,
        "max_bytes": max_bytes if settings.min_ratio else None,
        "chosen_t": t,
        "chosen_seed": chosen.seed,
        "sweep": [asdict(p) for p in kept["points"]],
        "clusters_tried": [
            {"K": k["clusters"], "clustered": k["clustered"], "sweep": [asdict(p) for p in k["points"]]} for k in tried
        ],
        "alternatives": [asdict(p) for p in alternatives],
        "after_steps": steps_figures,
        **ctx.errors(model),
    }
    return figures, record


def _cluster_and_sweep(model: nn.Module, name: str, plan: LayerPlan, sweep: Callable, ctx: _Context) -> dict:
    """Cluster ``name`` with ``plan``'s ``K``, fine-tune, measure every encoding, sweep the stored filter."""
    settings = ctx.settings
    weight = lambda: model.get_parameter(name).detach()  # noqa: E731
    cluster_and_finetune(model, {name: plan}, settings.finetune, ctx.loader(settings.finetune, 1),
                         init=settings.init, seed=ctx.seed, progress=ctx.progress)  # fmt: skip
    clustered = ctx.errors(model)
    deep_bytes = {
        coder: encode_tensor(name, weight(), "deep", index_bits=settings.deep.index_bits, entropy=coder).nbytes
        for coder in ("huffman", "ans")
    }
    encodings = [
        asdict(encode_and_measure(name, weight(), t=t, filter=f, seed=ctx.seed)[2])
        for f in settings.filters
        for t in usable_t(sorted({*T_VALUES, *settings.t_values}), weight())
    ]
    points, kept = sweep(settings.t_values, filter=settings.filter)
    return {
        "clusters": int(torch.unique(weight()[weight() != 0]).numel()),
        "clustered": clustered,
        "deep_codec_bytes": deep_bytes,
        "encodings": encodings,
        "points": points,
        "kept": kept,
        "state": copy.deepcopy(model.state_dict()),
    }


# ----------------------------------------------------------------------------- the whole pipeline


def encode_model(
    model: nn.Module, settings: WeightlessSettings, encoded: Mapping[str, container.TensorRecord]
) -> list[container.TensorRecord]:
    """One record per tensor of ``model.state_dict()``: ``encoded`` ones as given, deep plans deep, the rest raw."""
    deep = replace(settings.deep, layers={n: p for n, p in settings.deep.layers.items() if n not in encoded})
    return [encoded.get(record.name, record) for record in deep_compression.encode_model(model, deep)]


def run(
    model_name: str,
    mnist: Mnist,
    settings: WeightlessSettings,
    out_path: Path,
    *,
    seed: int = 0,
    progress: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> dict:
    """Run Weightless on ``model_name`` and write the compressed model to ``out_path``.

    Parameters
    ----------
    model_name : {"lenet300", "lenet5"}
    mnist : Mnist
    settings : WeightlessSettings
    out_path : pathlib.Path
        The ``.wcz`` file (its folder is created).
    seed : int
        Seeds the baseline, the data order, k-means and the filters' hashes.
    progress : bool
        Show progress bars.
    metadata : mapping of str to str, optional
        Stored in the file's header.

    Returns
    -------
    dict
        The fields of :func:`.deep_compression.run` (``baseline_test_error``,
        ``pruned_test_error`` after pruning, ``clustered_test_error`` after clustering the
        largest encoded layer,
        ``test_error`` and ``valid_error`` of the model decoded from the file, sizes, ``layers``,
        ``stage_seconds``, ``settings``) plus ``baseline_valid_error``, ``stages`` (per stage
        its errors; per encoded layer its sweep, chosen t per filter, centroids and histogram),
        ``encoded_layers`` (per encoded layer ``n``, ``m``, ``t``, ``K``, ``filter``,
        ``false_positives``, ``bytes`` and the deep codec's bytes for the same weights),
        ``largest_layer``, ``largest_layer_ratio`` and ``largest_layer_vs_deep``.

    Raises
    ------
    WeightcodecError
        For settings that do not fit the model (all problems listed), or if the model decoded
        from the file differs from the pipeline's own (it never should).
    """
    splits = splits_of(mnist)
    _check_settings(build_model(model_name, seed=seed), settings)
    ctx = _Context(mnist, settings, splits, seed, progress)
    model = train_baseline(model_name, mnist, settings.deep.baseline, seed=seed, progress=progress)
    baseline = ctx.errors(model)
    order = list(model.state_dict())  # network order, before masks rename the weights
    ctx.lap("baseline")
    prune_all(model, planned_layers(settings), settings.pruning, settings.prune, ctx.loader(settings.prune),
              rounds=settings.prune_rounds, cut_epochs=settings.cut_epochs, seed=ctx.seed, progress=progress)  # fmt: skip
    pruned = ctx.errors(model)
    ctx.lap("prune")

    figures, records = [], {}
    for stage in stages(order, settings.layers, settings.deep.layers):
        if stage.method == "deep":
            figures.append(_deep_stage(model, stage.names, ctx))
        else:
            [name] = stage.names
            stage_figures, records[name] = _weightless_stage(model, name, baseline["valid_error"], ctx)
            figures.append(stage_figures)

    pipeline = ctx.errors(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    file_bytes = container.write(out_path, encode_model(model, settings, records), metadata)
    decoded, wcz = load_decoded(model_name, out_path)
    final = ctx.errors(decoded)
    check_same_model(model, decoded, pipeline, final)
    ctx.lap("encode_decode_evaluate")

    original_bytes = FLOAT32_BYTES * count_parameters(decoded)
    identical = deep_on_identical_weights(wcz, settings.deep.index_bits)
    encoded_layers = [{**_encoded_layer(wcz, name, figures), **identical["layers"][name]} for name in records]
    largest = max(encoded_layers, key=lambda layer: layer["elements"])
    largest_stage = next(f for f in figures if f["names"] == [largest["name"]])
    return {
        "baseline_test_error": baseline["test_error"],
        "baseline_valid_error": baseline["valid_error"],
        "pruned_test_error": pruned["test_error"],
        "pruned_valid_error": pruned["valid_error"],
        "clustered_test_error": largest_stage["clustered"]["test_error"],
        "test_error": final["test_error"],
        "valid_error": final["valid_error"],
        "pipeline_test_error": pipeline["test_error"],
        "original_bytes": original_bytes,
        "file_bytes": file_bytes,
        "header_bytes": wcz.header_bytes,
        "ratio": original_bytes / file_bytes,
        "identical_deep_file_bytes": identical["file_bytes"],
        "identical_deep_ratio": {coder: original_bytes / size for coder, size in identical["file_bytes"].items()},
        "weights_nonzero_fraction": nonzero_fraction(decoded, planned_layers(settings)),
        "largest_layer": largest["name"],
        "largest_layer_ratio": largest["ratio"],
        "largest_layer_vs_deep": largest["vs_deep"],
        "encoded_layers": encoded_layers,
        "layers": layer_report(wcz),
        "stages": figures,
        "stage_seconds": ctx.timer.laps,
        "settings": json.loads(json.dumps(asdict(settings))),  # tuples as lists, as the JSON file has them
    }


def deep_on_identical_weights(wcz: container.WczFile, index_bits: int | str = "auto") -> dict:
    """The same file with its filter-encoded tensors stored losslessly by the deep codec instead.

    Each weightless tensor's decoded weights (false positives included) go to the deep codec
    (Huffman and ANS); the other records stay as they are. What a lossless coder needs for
    exactly the weights the filter gives back: the fair comparison for a filter's bytes.

    Returns
    -------
    dict
        ``file_bytes`` per entropy coder (the real bytes of that file) and, per weightless
        tensor, ``layers[name]["identical_deep_bytes"]`` per coder.

    Raises
    ------
    WeightcodecError
        If the deep codec does not give the weights back exactly (it never should).
    """
    names = [record.name for record in wcz.records if record.encoded.codec == weightless_codec.NAME]
    file_bytes, layers = {}, {name: {"identical_deep_bytes": {}} for name in names}
    for coder in ("huffman", "ans"):
        replaced = {}
        for name in names:
            record, decoded = wcz.record(name), wcz.decode(name)
            encoded = deep_codec.encode(decoded, index_bits=index_bits, entropy=coder)
            if not np.array_equal(deep_codec.decode(encoded.meta, encoded.sections, record.shape), decoded):
                raise WeightcodecError(f"{name}: the deep codec ({coder}) did not give the decoded weights back exactly")
            replaced[name] = replace(record, encoded=encoded)
            layers[name]["identical_deep_bytes"][coder] = encoded.nbytes
        records = [replaced.get(record.name, record) for record in wcz.records]
        file_bytes[coder] = len(container.to_bytes(records, wcz.metadata))
    return {"file_bytes": file_bytes, "layers": layers}


def _check_settings(model: nn.Module, settings: WeightlessSettings) -> None:
    """Every problem with ``settings`` for ``model`` at once, before any training."""
    params = dict(model.named_parameters())
    problems = [f"unknown layer {n!r}" for n in {**settings.deep.layers, **settings.layers} if n not in params]
    if settings.pruning not in PRUNERS:
        problems.append(f"unknown pruning {settings.pruning!r} (choose one of {sorted(PRUNERS)})")
    if settings.reference not in REFERENCES:
        problems.append(f"unknown reference {settings.reference!r} (choose one of {sorted(REFERENCES)})")
    problems += [
        f"{n}: K = {p.clusters} clusters need t >= {p.bits}, but t_values stop at {max(settings.t_values, default=0)}"
        for n, p in settings.layers.items()
        if not any(2**t >= p.clusters for t in settings.t_values)
    ]
    unknown_filters = sorted(set(settings.filters) - set(weightless_codec.FILTERS))
    if unknown_filters or settings.filter not in settings.filters:
        problems.append(
            f"filters {list(settings.filters)} with stored filter {settings.filter!r}: each must be one of "
            f"{sorted(weightless_codec.FILTERS)}, and the stored filter one of the swept ones"
        )
    if problems:
        raise WeightcodecError(f"Weightless settings do not fit {type(model).__name__}: {'; '.join(problems)}")


def _encoded_layer(wcz: container.WczFile, name: str, figures: list[dict]) -> dict:
    """Per encoded layer: the filter's figures (read from the file) and the deep codec's bytes."""
    record = wcz.record(name)
    described = weightless_codec.describe(record.encoded.meta, record.encoded.sections, record.shape)
    stage = next(f for f in figures if f["names"] == [name])
    elements = math.prod(record.shape)
    deep_bytes = stage["deep_codec_bytes"]["huffman"]
    return {
        "name": name,
        "shape": list(record.shape),
        "elements": elements,
        "n": described["n"],
        "m": described["m"],
        "t": described["t"],
        "K": described["clusters"],
        "filter": described["filter"],
        "false_positives": described["measured_false_positives"],
        "expected_false_positives": described["expected_false_positives"],
        "bytes": record.nbytes,
        "section_bytes": described["section_bytes"],
        "bits_per_nonzero": described["bits_per_nonzero"],
        "ratio": FLOAT32_BYTES * elements / record.nbytes,
        "deep_codec_bytes": deep_bytes,
        "deep_codec_ans_bytes": stage["deep_codec_bytes"]["ans"],
        "vs_deep": deep_bytes / record.nbytes,
    }


# ----------------------------------------------------------------------------- reproduce


def run_reproduce(
    model: str, mnist: Mnist, out_path: Path, *, quick: bool, seed: int, progress: bool, every_layer: bool = False
) -> dict:
    """``reproduce(model, "weightless")``: :func:`run` with :data:`.settings.WEIGHTLESS`, plus its figures.

    With ``every_layer`` (``reproduce(model, "weightless-all")``) every weight layer is encoded
    by Weightless, in network order (:func:`.settings.all_layers`), instead of the largest only.

    The PNG figures (error, bytes and false positives against ``t``; each encoded layer's
    weight histogram with its centroids) go beside ``out_path`` as
    ``weightless[-all]-<model>[-quick]-*.png``; their paths are listed under ``figures``.
    """
    from . import plots  # matplotlib loads only when figures are drawn

    settings = quick_weightless(WEIGHTLESS[model]) if quick else WEIGHTLESS[model]
    if every_layer:
        settings = all_layers(settings)
    method = "weightless-all" if every_layer else "weightless"
    metadata = {"model": model, "method": method, "seed": str(seed)}
    result = run(model, mnist, settings, out_path, seed=seed, progress=progress, metadata=metadata)
    prefix = Path(out_path).parent / f"{method}-{model}{'-quick' if quick else ''}"
    result["figures"] = [str(path) for path in plots.weightless_figures(result, prefix)]
    result["paper_weightless"] = report.PAPER.get(model)
    return result

