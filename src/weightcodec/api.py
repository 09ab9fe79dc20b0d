"""The Python entry points: compress a model or a state_dict into a ``.wcz`` file, load it back.

In the spirit of :mod:`torch.nn.utils.prune` and :mod:`safetensors.torch`::

    import torch, weightcodec
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    data = weightcodec.compress(model, {"rule": [{"match": "*", "method": "deep", "clusters": 16}]}, "model.wcz")
    weightcodec.load_into(model, "model.wcz")

What happens to each tensor (see :mod:`weightcodec.recipe` for the rules):

1. **Plan.** Compressible weights (Linear, Conv1d/2d/3d and Embedding weights of a module; in a
   bare state_dict every floating tensor with two or more dims) get the recipe's first matching
   rule. Everything is validated before anything changes, and every offender is reported at once.
2. **Simplify.** A weight that already has at most ``K`` distinct non-zero values is kept as is,
   so its roundtrip is lossless. Any other is pruned by magnitude to the rule's ``sparsity``
   and its non-zeros are clustered to ``K`` shared values (1-D k-means). With a training hook
   the model is retrained after each step, through the :mod:`weightcodec.simplify`
   parametrizations so that any training loop keeps pruned weights zero and shared weights tied.
3. **Encode.** Each weight goes to its rule's codec; all other tensors are stored raw (integer
   buffers such as ``position_ids`` exactly). The file records the original dtype (float32,
   float16, bfloat16, ...) and restores it on load. A tensor that is the same storage as an
   earlier one (tied weights) is stored once, as an ``alias`` of the first name, follows that
   name's rule, and comes back tied.

A model passed to :func:`compress` is simplified **in place**, as :mod:`torch.nn.utils.prune`
does: afterwards it holds exactly the weights the file stores (for the lossless codecs), which
is the model to evaluate. A state_dict is never modified. If any step fails, the model is put
back as it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__, container, distributed, state_files, tensors
from .codecs import deep
from .codecs.parallel import ordered_map
from .errors import EncodeError, WeightcodecError
from .recipe import CLUSTERED, PRUNED, Recipe, Rule, as_recipe, load_entry_point, load_hook
from .simplify import cluster, prune

__all__ = [
    "AUTO_ENTROPY",
    "COMPRESSIBLE_MODULES",
    "Step",
    "compressible_names",
    "plan",
    "apply_recipe",
    "compress",
    "compress_file",
    "file_metadata",
    "restore_",
    "decompress_file",
    "load",
    "load_bytes",
    "load_into",
    "load_model",
]

#: Module types whose ``weight`` is compressible; other tensors of a model are stored raw.
COMPRESSIBLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
#: The deep codec's default entropy choice: encode with every coder of ``deep.ENTROPY_CODERS``
#: (Huffman, ANS) and keep the smaller stream pair; a recipe may still name one coder.
AUTO_ENTROPY = "auto"
# Codecs whose encoder takes a seed (the Bloomier filter's hash seed).
SEEDED_CODECS = frozenset({"weightless"})

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Step:
    """What :func:`apply_recipe` does to one compressible tensor.

    Attributes
    ----------
    name : str
        state_dict key.
    rule : Rule
        The recipe rule that matched it.
    mask : torch.Tensor or None
        Bool, True = kept: prune to this mask, then cluster. None when the tensor is stored as
        it is (a ``raw`` rule, or at most ``rule.clusters`` distinct non-zero values already).
    """

    name: str
    rule: Rule
    mask: torch.Tensor | None


# ----------------------------------------------------------------------------- planning


def compressible_names(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> list[str]:
    """The state_dict keys a recipe may compress, in state_dict order.

    For a module: the ``weight`` of every :data:`COMPRESSIBLE_MODULES` instance. For a bare
    state_dict, where layer types are unknown: every floating tensor with two or more dims.

    Examples
    --------
    >>> compressible_names(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)))
    ['0.weight']
    """
    if isinstance(model_or_state_dict, nn.Module):
        weights = {
            f"{prefix}.weight" if prefix else "weight"
            for prefix, module in model_or_state_dict.named_modules()
            if isinstance(module, COMPRESSIBLE_MODULES)
        }
        return [name for name in model_or_state_dict.state_dict() if name in weights]
    return [name for name, t in model_or_state_dict.items() if t.is_floating_point() and t.dim() >= 2]


def plan(state_dict: Mapping[str, torch.Tensor], names: list[str], recipe: Recipe) -> dict[str, Step]:
    """Match the recipe against ``names`` and check every matched tensor, before anything changes.

    Parameters
    ----------
    state_dict : mapping of str to torch.Tensor
    names : list of str
        The compressible keys (:func:`compressible_names`).
    recipe : Recipe

    Returns
    -------
    dict of str to Step
        One step per matched name.

    Raises
    ------
    EncodeError
        Listing every offender: a rule matching nothing, a tensor with zero elements or with
        NaN / Inf values, or ``clusters`` larger than the distinct non-zero weights left after
        pruning.
    """
    steps, problems = {}, []
    for name, rule in recipe.assign(names).items():
        step, problem = _plan_tensor(name, state_dict[name], rule)
        steps[name] = step
        if problem:
            problems.append(problem)
    if problems:
        raise EncodeError("; ".join(problems))
    return steps


def _plan_tensor(name: str, weight: torch.Tensor, rule: Rule) -> tuple[Step, str | None]:
    if not rule.simplifies:
        return Step(name, rule, None), None
    if weight.numel() == 0:
        return Step(name, rule, None), (
            f"{name} has zero elements (shape {tuple(weight.shape)}), nothing to {rule.method}-encode: "
            f"list a rule {{match = {name!r}, method = 'raw'}} first"
        )
    weight = weight.detach().to(torch.float32)
    if not bool(torch.isfinite(weight).all()):
        n_nan, n_inf = int(torch.isnan(weight).sum()), int(torch.isinf(weight).sum())
        return Step(name, rule, None), f"{name} holds {n_nan} NaN and {n_inf} infinite values; compress a finite model"
    if _distinct_nonzeros(weight) <= rule.clusters:
        return Step(name, rule, None), None
    mask = prune.magnitude_mask(weight, sparsity=rule.sparsity)
    left = _distinct_nonzeros(weight[mask])
    if left < rule.clusters:
        return Step(name, rule, mask), (
            f"{name}: clusters={rule.clusters} is larger than the {left} distinct non-zero weights left "
            f"at sparsity {rule.sparsity}; use clusters <= {left} or a lower sparsity for it"
        )
    return Step(name, rule, mask), None


def _distinct_nonzeros(values: torch.Tensor) -> int:
    return int(torch.unique(values[values != 0]).numel())


# ----------------------------------------------------------------------------- simplifying


def apply_recipe(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    recipe: Recipe | Mapping | str | os.PathLike | None = None,
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[StateDict, dict[str, Step]]:
    """Prune and cluster the compressible weights as the recipe says (step 1 and 2 above).

    Parameters
    ----------
    model_or_state_dict : torch.nn.Module or mapping of str to torch.Tensor
        A module is simplified in place; a state_dict is not modified.
    recipe : Recipe, dict, path or None
        See :func:`weightcodec.recipe.as_recipe`; None clusters every compressible weight to 32
        values with the deep codec.
    seed : int
        Seed of the k-means ``random`` initialisation.
    progress : bool
        Show a progress bar.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
        The simplified tensors, each in its original dtype.
    steps : dict of str to Step
        The plan that was carried out.

    Raises
    ------
    EncodeError
        As :func:`plan`; also for a training hook with a bare state_dict (it needs a model),
        or a hook that cannot be imported. Nothing is changed then.
    """
    recipe = as_recipe(recipe)
    hook = load_hook(recipe)
    is_model = isinstance(model_or_state_dict, nn.Module)
    if hook is not None and not is_model:
        raise EncodeError(
            f"the recipe's training hook {recipe.hook!r} needs a model; pass the nn.Module, not its state_dict"
        )
    state = model_or_state_dict.state_dict() if is_model else dict(model_or_state_dict)
    aliases = tensors.shared_aliases(state)
    names = [name for name in compressible_names(model_or_state_dict) if name not in aliases]
    steps = plan(state, names, recipe)
    if hook is not None:
        _simplify_model(model_or_state_dict, steps, hook, seed, progress)
        return model_or_state_dict.state_dict(), steps
    simplified = {**state, **_simplify_tensors(state, steps, seed, progress)}
    simplified.update({name: simplified[target] for name, target in aliases.items()})  # tied stays tied
    if is_model:
        model_or_state_dict.load_state_dict(simplified)
    return simplified, steps


def _simplify_tensors(state: Mapping[str, torch.Tensor], steps: dict[str, Step], seed: int, progress: bool) -> StateDict:
    """Data-free: prune each weight to its mask, then cluster its non-zeros (same dtype back)."""
    todo = [step for step in steps.values() if step.mask is not None]
    return {
        step.name: _simplify_tensor(state[step.name], step, seed)
        for step in tqdm(todo, desc="clustering", unit="tensor", disable=not progress or not todo)
    }


def _simplify_tensor(tensor: torch.Tensor, step: Step, seed: int) -> torch.Tensor:
    """Prune one weight to its step's mask, then cluster its non-zeros (same dtype back)."""
    return cluster.quantize(tensor.detach() * step.mask, step.rule.clusters, init=step.rule.init, seed=seed)


def _simplify_model(model: nn.Module, steps: dict[str, Step], hook: Callable, seed: int, progress: bool) -> None:
    """Prune, retrain, cluster, retrain, in place; on any failure the model is put back as it was.

    Weights kept as they are (already clustered) are frozen while the hook trains, so that they
    stay clustered. In a job of several processes (:mod:`weightcodec.distributed`) every rank
    computes the same masks and centroids from the same weights; after each hook call all ranks
    must still hold the same model (masks, centroids, weights), which is checked.
    """
    snapshot = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    modules = dict(model.named_modules())
    located = {name: modules[name.rpartition(".")[0]] for name in steps}
    todo = [name for name, step in steps.items() if step.mask is not None]
    frozen = [located[name].weight for name, step in steps.items() if step.mask is None and step.rule.simplifies]
    was_trainable = [p.requires_grad for p in frozen]
    try:
        for param in frozen:
            param.requires_grad_(False)
        for name in todo:
            prune.prune_(located[name], "weight", mask=steps[name].mask)
        hook(model, PRUNED)
        distributed.check_identical(model.state_dict(), f"after the training hook ({PRUNED})")
        for name in tqdm(todo, desc="clustering", unit="tensor", disable=not progress or not todo):
            prune.remove_(located[name], "weight")
            rule = steps[name].rule
            cluster.share_weights_(located[name], "weight", rule.clusters, init=rule.init, seed=seed)
        hook(model, CLUSTERED)
        distributed.check_identical(model.state_dict(), f"after the training hook ({CLUSTERED})")
        for name in todo:
            cluster.make_permanent_(located[name], "weight")
    except BaseException:
        restore_(model, snapshot)
        raise
    finally:
        for param, trainable in zip(frozen, was_trainable):
            param.requires_grad_(trainable)


def restore_(model: nn.Module, snapshot: StateDict) -> None:
    """Drop any mask or weight sharing left on ``model`` and load ``snapshot`` (a cloned state_dict) back."""
    for module in model.modules():
        if prune.is_pruned(module, "weight"):
            prune.remove_(module, "weight")
        if cluster.is_shared(module, "weight"):
            cluster.make_permanent_(module, "weight")
    model.load_state_dict(snapshot)


# ----------------------------------------------------------------------------- encoding


def compress(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    recipe: Recipe | Mapping | str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    progress: bool = False,
) -> bytes:
    """Simplify and encode a model or state_dict into the bytes of a ``.wcz`` file.

    Parameters
    ----------
    model_or_state_dict : torch.nn.Module or mapping of str to torch.Tensor
        A module is simplified in place (see the module docstring); a state_dict is not modified.
    recipe : Recipe, dict, path or None
        See :func:`weightcodec.recipe.as_recipe`.
    path : str or os.PathLike, optional
        Also write the file there, atomically (nothing is left there if anything fails).
    seed : int
        Seed of k-means ``random`` initialisation and of the Bloomier filter hashes.
    progress : bool
        Show progress bars.

    Returns
    -------
    bytes
        The file. The same input, recipe and seed always give the same bytes.

    Raises
    ------
    EncodeError
        For any invalid recipe, tensor or codec parameter (all offenders listed).

    Examples
    --------
    >>> sd = {"w": torch.tensor([[0.0, 1.0], [2.0, 0.0]]), "b": torch.zeros(2)}
    >>> sorted(load_bytes(compress(sd)).items())[1][1].tolist()
    [[0.0, 1.0], [2.0, 0.0]]
    """
    recipe = as_recipe(recipe)
    _refuse_auto(recipe)
    if path is not None:
        container.check_writable(path)
    state, steps = apply_recipe(model_or_state_dict, recipe, seed=seed, progress=progress)
    aliases = tensors.shared_aliases(state)
    records = [
        tensors.encode_alias(name, tensor, aliases[name]) if name in aliases else _encode(name, tensor, steps.get(name), seed)
        for name, tensor in tqdm(state.items(), desc="encoding", unit="tensor", disable=not progress)
    ]
    data = container.to_bytes(records, file_metadata(recipe, seed))
    if path is not None:
        container.atomic_write_bytes(Path(path), data)
    return data


def _refuse_auto(recipe: Recipe) -> None:
    """A recipe with an ``[auto]`` table asks for the search, which lives above this module."""
    if recipe.auto is not None:
        raise EncodeError(
            "the recipe has an [auto] table: the automatic search runs with weightcodec.compress_to_error(model, recipe, "
            "path) or `weightcodec compress MODULE:FUNCTION --recipe R.toml --target-error E`"
        )


def compress_file(
    source: str | os.PathLike | state_files.StateDictFile,
    recipe: Recipe | Mapping | str | os.PathLike | None,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    jobs: int = 1,
    progress: bool = False,
) -> int:
    """Compress a state_dict file into a ``.wcz`` file one tensor at a time, in bounded memory.

    The file written is the one :func:`compress` writes for the same state_dict, recipe and
    seed, but the model is never held whole: one pass reads each tensor once (memory-mapped, see
    :class:`~weightcodec.state_files.StateDictFile`), checks, simplifies and encodes it and streams
    its sections to the file (:func:`weightcodec.container.write`) before the next is read.
    Peak memory is that of about ``jobs`` tensors, whatever the model's size. Once a tensor
    fails its checks the later ones are only checked, and every offender is reported at the end.

    Parameters
    ----------
    source : str, os.PathLike or StateDictFile
        A ``.safetensors`` / ``.pt`` / ``.pth`` state_dict file.
    recipe : Recipe, dict, path or None
        See :func:`weightcodec.recipe.as_recipe`; a training hook needs a model (use :func:`compress`).
    path : str or os.PathLike
        The ``.wcz`` file, written atomically.
    seed : int
        As for :func:`compress`.
    jobs : int
        Tensors encoded at once, on threads (default 1). The bytes do not depend on it.
    progress : bool
        Show a progress bar.

    Returns
    -------
    int
        Size of the file written, in bytes.

    Raises
    ------
    EncodeError
        As :func:`compress`: every offending tensor is listed, and no file is written.
    """
    recipe = as_recipe(recipe)
    _refuse_auto(recipe)
    if load_hook(recipe) is not None:
        raise EncodeError(
            f"the recipe's training hook {recipe.hook!r} needs a model; use weightcodec.compress(model, ...)"
        )
    container.check_writable(path)
    source = source if isinstance(source, state_files.StateDictFile) else state_files.StateDictFile(source)
    rules = recipe.assign(compressible_names(source.specs))
    problems: list[str] = []  # in file order; once one is found the rest are only checked

    def encode_one(name: str) -> container.TensorRecord | str:
        """``name``'s record, read once from the file; or what stops it from being encoded."""
        tensor = source[name]
        step, problem = _plan_tensor(name, tensor, rules[name]) if name in rules else (None, None)
        if problem or problems:
            return problem or ""  # "": not encoded, as an earlier tensor failed
        if step is not None and step.mask is not None:
            tensor = _simplify_tensor(tensor, step, seed)
        return _encode(name, tensor, step, seed)

    def checked_records():
        bar = None  # shown from the first record on: an offender among the first tensors gets a clean error
        for result in ordered_map(encode_one, list(source), jobs):
            if isinstance(result, str):
                problems.extend([result] if result else [])
            elif not problems:
                bar = bar or tqdm(desc="encoding", unit="tensor", total=len(source), disable=not progress)
                bar.update()
                yield result
        if bar is not None:
            bar.close()
        if problems:  # raised inside container.write: no file, no temporary file is left
            raise EncodeError("; ".join(problems))

    return container.write(path, checked_records(), file_metadata(recipe, seed))


def file_metadata(recipe: Recipe, seed: int) -> dict[str, str]:
    """What a file records of how it was made: the producer, the recipe (rules and hook) and the seed."""
    return {"producer": f"weightcodec {__version__}", "recipe": recipe.to_json(), "seed": str(seed)}


def _encode(name: str, tensor: torch.Tensor, step: Step | None, seed: int) -> container.TensorRecord:
    if step is None or not step.rule.simplifies:
        return tensors.encode_tensor(name, tensor)
    params = dict(step.rule.codec_params)
    if step.rule.method in SEEDED_CODECS:
        params["seed"] = seed
    if step.rule.method == deep.NAME and params.get("entropy", AUTO_ENTROPY) == AUTO_ENTROPY:
        return tensors.encode_deep_smallest(name, tensor, **params)
    return tensors.encode_tensor(name, tensor, step.rule.method, **params)


# ----------------------------------------------------------------------------- loading


def load(path: str | os.PathLike, *, max_bytes: int | None = None) -> StateDict:
    """Read a ``.wcz`` file into a state_dict, each tensor in the dtype it was saved with.

    Parameters
    ----------
    path : str or os.PathLike
    max_bytes : int, optional
        Memory budget for the decoded tensors, all together. A few bytes of a file can claim a
        huge tensor, so the declared sizes are summed and checked before anything is decoded.
        Default: the memory available to the process (``MemAvailable`` on Linux), which a
        normal model never reaches.

    Raises
    ------
    WeightcodecError
        If the file is missing or unreadable; :class:`~weightcodec.errors.FormatError` or
        :class:`~weightcodec.errors.CorruptFileError` if it is not a valid ``.wcz`` file;
        :class:`~weightcodec.errors.MemoryBudgetError` if it decodes to more than ``max_bytes``.
    """
    return tensors.decode_file(container.read(path), max_bytes=max_bytes)


def decompress_file(
    wcz_path: str | os.PathLike,
    path: str | os.PathLike,
    *,
    jobs: int = 1,
    max_bytes: int | None = None,
    progress: bool = False,
) -> None:
    """Decode a ``.wcz`` file into a state_dict file (``.safetensors``, ``.pt``, ``.pth``), atomically.

    Each tensor is decoded straight into its bytes in the new file, mapped into memory
    (:func:`weightcodec.state_files.write_state_dict`; the weightless codec writes there
    directly, others through one decoded copy), so whatever the format peak memory is that of
    about ``jobs`` decoded tensors, and only the ``jobs`` largest tensors are checked against
    the memory budget ``max_bytes``. The file holds :func:`load`'s tensors (raw tensors bit for
    bit), and its bytes do not depend on ``jobs``; a ``.safetensors`` file has the bytes of
    :func:`weightcodec.state_files.save_state_dict` of :func:`load`'s state_dict.

    Raises
    ------
    WeightcodecError
        As :func:`load`, or if ``path`` cannot be written.
    """
    container.check_writable(path)
    wcz = container.read(wcz_path)
    records = {rec.name: rec for rec in wcz.records}
    container.check_budget(sorted(records.values(), key=container.decoded_nbytes, reverse=True)[: max(jobs, 1)], max_bytes)
    specs = {
        name: torch.empty(rec.shape, dtype=tensors.TORCH_DTYPES[rec.dtype], device="meta")
        for name, rec in records.items()
    }
    with state_files.write_state_dict(path, specs) as writer:

        def fill(name: str) -> None:
            writer.fill(name, lambda target: tensors.decode_into(wcz, name, target))

        for _ in tqdm(ordered_map(fill, list(records), jobs), desc="decoding", unit="tensor", total=len(records),
                      disable=not progress):
            pass


def load_bytes(data: bytes, *, max_bytes: int | None = None) -> StateDict:
    """Like :func:`load`, from the bytes :func:`compress` returned."""
    return tensors.decode_file(container.from_bytes(data), max_bytes=max_bytes)


def load_into(model: nn.Module, path: str | os.PathLike, *, strict: bool = True, max_bytes: int | None = None):
    """Load a ``.wcz`` file into ``model`` (as :meth:`torch.nn.Module.load_state_dict`).

    ``max_bytes`` is the memory budget of :func:`load`.

    Returns
    -------
    NamedTuple
        ``missing_keys`` and ``unexpected_keys``, as torch returns them.

    Raises
    ------
    WeightcodecError
        If the file cannot be read, or its tensors do not fit ``model`` (names or shapes).
    """
    return _load_state(model, load(path, max_bytes=max_bytes), path, strict=strict)


def _load_state(model: nn.Module, state: StateDict, source, *, strict: bool = True):
    """``model.load_state_dict`` with torch's multi-line error turned into one clear line."""
    try:
        return model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        details = " ".join(str(exc).split())
        raise WeightcodecError(f"{source} does not fit {type(model).__name__}: {details}") from None


def load_model(
    source: str | os.PathLike, *, weights: str | os.PathLike | None = None, search: list[Path] | tuple = ()
) -> nn.Module | StateDict:
    """What ``weightcodec compress`` works on: a state_dict file, or a model from a factory.

    Parameters
    ----------
    source : str or os.PathLike
        A state_dict file (``.pt``, ``.pth``, ``.safetensors``, read safely), or a
        ``module:function`` entry point that returns an :class:`torch.nn.Module` (needed for a
        recipe with a training hook).
    weights : str or os.PathLike, optional
        With a factory: a state_dict file loaded into the new model.
    search : sequence of pathlib.Path
        Folders searched first when importing the factory's module.

    Raises
    ------
    WeightcodecError
        If the file is missing or not a state_dict, the factory cannot be imported or does not
        return a module, ``weights`` is given with a state_dict file, or the weights do not fit.
    """
    spec = os.fspath(source)
    if Path(spec).suffix in state_files.STATE_DICT_SUFFIXES or Path(spec).exists() or ":" not in spec:
        if weights is not None:
            raise WeightcodecError(f"{spec} is a state_dict already; weights= only goes with a 'module:function' model")
        return state_files.load_state_dict(spec)
    model = load_entry_point(spec, search=search, what="model")()
    if not isinstance(model, nn.Module):
        raise WeightcodecError(f"model {spec!r} returned {type(model).__name__}, expected a torch.nn.Module")
    if weights is not None:
        _load_state(model, state_files.load_state_dict(weights), weights)
    return model
