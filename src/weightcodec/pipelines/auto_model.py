"""``weightcodec compress --target-error E``: the automatic search (:mod:`.auto`) on a user's own model.

The recipe says what to search and how to retrain and evaluate::

    [[rule]]
    match = "*"                       # the weights the search may simplify (method "deep");
    method = "deep"                   # "raw" rules keep theirs exact
    [training]
    hook = "my_model:retrain"         # retrain(model, stage), stage "pruned" or "clustered"
    [auto]
    target_error = 2.0                # percent (or --target-error / target_error=)
    evaluate = "my_model:valid_error" # valid_error(model) -> percent on the user's validation data
    n_valid = 10000                   # examples it evaluates: the budget keeps one standard error below E

:func:`compress_to_error` then chooses, per searched weight, the pruning level, ``K`` and the
codec (deep codec with Huffman or ANS, or a retrieval filter with its ``t``), and for every
other tensor (biases, norms) raw, float16 or clustered: the fewest real bytes whose error on
``evaluate`` stays within the validation budget (:mod:`.auto` explains the budget and its
shares). The hook is the only training, through :class:`HookTraining`:

* a pruning level cuts every searched weight to the level by magnitude (masks fixed, so any
  training loop keeps the zeros), then ``hook(model, "pruned")``. Dynamic network surgery needs
  a call after every optimiser step, which a hook does not give, so pruning is by magnitude;
* each ``K`` tried ties a weight's non-zeros to ``K`` shared centroids, then
  ``hook(model, "clustered")`` trains them (and every unfrozen layer), and they are fixed;
* after a weight is replaced by what a filter gives back, ``hook(model, "clustered")`` with
  every parameter up to that layer frozen (``requires_grad=False``: build the optimiser from
  the parameters that require grad, or let torch skip those without a gradient).

A finished weight is frozen for good. Nothing of the test split is used: report the test error
of the model the file decodes to yourself.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from .. import api, container, tensors
from ..errors import EncodeError, WeightcodecError
from ..recipe import CLUSTERED, PRUNED, Recipe, as_recipe, load_entry_point, load_hook
from .auto import Problem, search
from .settings import AutoSettings, LayerPlan
from .steps import fix_shared_, mask_, share_
from .training import layers_after

__all__ = ["HookTraining", "compress_to_error"]


@dataclass
class HookTraining:
    """:class:`.auto.Training` by the user's hook ``hook(model, stage)`` (see the module docstring)."""

    hook: Callable[[nn.Module, str], object]
    init: str = "linear"
    seed: int = 0

    def prune(self, model: nn.Module, plans: Mapping[str, LayerPlan], level: int) -> None:
        mask_(model, plans)
        self.hook(model, PRUNED)

    def finetune(self, model: nn.Module, plans: Mapping[str, LayerPlan]) -> None:
        share_(model, plans, init=self.init, seed=self.seed)
        self.hook(model, CLUSTERED)
        fix_shared_(model, plans)

    def retrain_after(self, model: nn.Module, name: str, desc: str) -> None:
        later = layers_after(model, name.rpartition(".")[0])
        if not later:
            return
        trained = {id(p) for layer in later for p in model.get_submodule(layer).parameters()}
        frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in trained]
        try:
            for p in frozen:
                p.requires_grad_(False)
            self.hook(model, CLUSTERED)
        finally:
            for p in frozen:
                p.requires_grad_(True)


def compress_to_error(
    model: nn.Module,
    recipe: Recipe | Mapping | str | os.PathLike,
    path: str | os.PathLike | None = None,
    *,
    target_error: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """The smallest ``.wcz`` of ``model`` whose validation error stays within ``target_error``.

    ``model`` is simplified in place: afterwards it holds exactly what the file gives back, its
    parameters as trainable as they were. If anything fails it is put back as it was.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model.
    recipe : Recipe, dict or path
        With a training hook and an ``[auto]`` table naming ``evaluate`` and ``n_valid`` (and
        ``target_error`` unless given here); its ``deep`` rules pick the weights searched.
    path : str or os.PathLike, optional
        Also write the file there, atomically.
    target_error : float, optional
        Percent on ``evaluate``; overrides the recipe's.
    seed : int
        Seed of k-means and of the filters' hashes (the hook's own randomness is the hook's).
    progress : bool
        Show progress bars of the search's steps.

    Returns
    -------
    dict
        ``data`` (the file's bytes), ``file_bytes``, ``original_bytes`` (the state_dict's tensor
        bytes), ``ratio``, ``target_error``, ``valid_budget``, ``baseline_valid_error`` and
        ``valid_error`` (of the model decoded from the file), ``choices`` (per tensor: codec,
        bytes) and ``search`` (the trace of everything tried).

    Raises
    ------
    EncodeError
        Listing everything the recipe or the call lacks for the search (a model, a hook,
        ``evaluate``, ``n_valid``, a target), or a rule that picks no weight; as
        :func:`weightcodec.recipe.parse_recipe` for a bad recipe.
    """
    recipe = as_recipe(recipe)
    request = recipe.auto
    target = target_error if target_error is not None else getattr(request, "target_error", None)
    _check_request(model, recipe, target)
    hook = load_hook(recipe)
    evaluate = load_entry_point(request.evaluate, search=[recipe.folder] if recipe.folder else [], what="evaluation function")
    searched, exact = _searched_weights(model, recipe)
    settings = AutoSettings(target_error=float(target), levels=tuple({name: s for name in searched} for s in request.sparsities),
                            pruning="magnitude", bits=request.bits)  # fmt: skip
    problem = Problem(HookTraining(hook, settings.init, seed), lambda m: float(evaluate(m)), request.n_valid)
    snapshot = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        records, trace = search(model, settings, problem, exact=exact, seed=seed, progress=progress)
        data = container.to_bytes(records, {**api.file_metadata(recipe, seed), "target_error": f"{target}"})
        _check_decodes_to(model, api.load_bytes(data))
    except BaseException:
        api.restore_(model, snapshot)
        raise
    finally:  # the search freezes each finished layer; the caller gets its model as trainable as it was
        for name, p in model.named_parameters():
            p.requires_grad_(trainable.get(name, p.requires_grad))
    if path is not None:
        container.atomic_write_bytes(Path(path), data)
    original = sum(t.numel() * t.element_size() for t in snapshot.values())
    wcz = container.from_bytes(data)
    return {
        "data": data,
        "file_bytes": len(data),
        "original_bytes": original,
        "ratio": original / len(data),
        "target_error": float(target),
        "valid_budget": trace["budget"]["valid_budget"],
        "baseline_valid_error": trace["baseline_valid_error"],
        "valid_error": float(evaluate(model)),
        "choices": [{"name": r.name, "codec": r.encoded.codec, "bytes": r.nbytes} for r in wcz.records],
        "search": trace,
    }


def _check_request(model: object, recipe: Recipe, target: float | None) -> None:
    """Every missing piece at once, each with its fix."""
    request = recipe.auto
    problems = []
    if not isinstance(model, nn.Module):
        problems.append(f"it needs the model itself to retrain (got a {type(model).__name__}): pass the nn.Module, "
                        "or 'module:function' on the command line")  # fmt: skip
    if recipe.hook is None:
        problems.append("it retrains between steps: add [training] hook = 'module:function' (called as hook(model, stage))")
    if request is None or request.evaluate is None:
        problems.append("it chooses on your validation data: add [auto] evaluate = 'module:function' "
                        "(called as evaluate(model), returning the validation error in percent)")  # fmt: skip
    if request is None or request.n_valid is None:
        problems.append("add [auto] n_valid = N, the number of validation examples evaluate uses "
                        "(the budget keeps one standard error below the target)")  # fmt: skip
    if target is None:
        problems.append("give the error to stay within: --target-error E, or [auto] target_error = E (percent)")
    elif not (isinstance(target, (int, float)) and 0 < target < 100 and math.isfinite(target)):
        problems.append(f"the target error is a percentage in (0, 100), got {target!r}")
    if problems:
        raise EncodeError("the automatic search cannot run: " + "; ".join(problems))


def _searched_weights(model: nn.Module, recipe: Recipe) -> tuple[list[str], list[str]]:
    """The weights the search simplifies (``deep`` or ``weightless`` rules) and the compressible ones kept exact."""
    state = model.state_dict()
    if tensors.shared_aliases(state):
        raise EncodeError(f"tied weights ({sorted(tensors.shared_aliases(state))}) are not supported by the automatic "
                          "search yet; compress with a recipe's rules instead")  # fmt: skip
    names = api.compressible_names(model)
    rules = recipe.assign(names)
    searched = [name for name, rule in rules.items() if rule.simplifies]
    if not searched:
        raise EncodeError(f"no rule with method 'deep' picks a weight for the search; compressible weights: {names}")
    return searched, [name for name in names if name not in searched]


def _check_decodes_to(model: nn.Module, decoded: Mapping[str, torch.Tensor]) -> None:
    """The file must give back exactly the searched model (the codecs are exact on simplified weights)."""
    state = model.state_dict()
    different = [name for name, value in decoded.items() if not torch.equal(value.to(state[name].dtype), state[name])]
    if different or set(decoded) != set(state):
        raise WeightcodecError(f"the file does not decode to the searched model ({different}); it is a bug, please report it")
