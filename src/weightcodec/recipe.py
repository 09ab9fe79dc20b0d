"""Recipes: which method compresses which parameter, read from a small TOML file.

A recipe is a list of rules. Each rule has a glob on parameter names (``fnmatch`` style: ``*``
also matches dots) and a method with its settings; the **first** matching rule decides a
parameter's fate. Compressible parameters (Linear, Conv, Embedding weights; in a bare
state_dict every floating tensor with two or more dims) that no rule matches are stored raw, as
are all other tensors. A rule that matches no compressible parameter is an error: it is almost
always a typo.

::

    # recipe.toml
    [[rule]]
    match = "features.0.weight"     # the first conv is small and sensitive: keep it exact
    method = "raw"

    [[rule]]
    match = "*"                     # every other compressible weight
    method = "deep"                 # deep | weightless | raw
    sparsity = 0.8                  # fraction of weights pruned by magnitude (default 0)
    clusters = 32                   # K shared values per layer (default 32)
    init = "linear"                 # k-means initialisation
    index_bits = "auto"             # deep only: gap field width, or "auto"
    entropy = "auto"                # deep only: "huffman", "ans", or "auto" (default): the smaller

    [training]
    hook = "my_training:retrain"    # optional: called as retrain(model, stage)

    [auto]                          # optional: search per layer instead (weightcodec compress --target-error)
    target_error = 2.0              # percent, on the evaluation function below
    evaluate = "my_training:valid_error"   # evaluate(model) -> validation error in percent
    n_valid = 10000                 # validation examples it uses (the budget keeps a margin over their noise)
    sparsities = [0.5, 0.75, 0.9, 0.95]    # pruning levels tried, in order (optional)
    bits = [2, 3, 4, 5, 6]          # bits per code tried, K = 2**bits (optional)

Weightless rules take ``t`` (bits per filter cell, required) and ``filter`` (``"auto"`` by
default: the smallest of the ribbon, Bloomier and fuse tables) instead of ``index_bits`` /
``entropy``. Unknown keys, keys that do not belong to a rule's method and
values of the wrong type are errors that list what is valid. The ``filter`` and ``entropy``
names go to the codec unchanged, so codecs added later are usable without a change here.

With an ``[auto]`` table a ``deep`` rule only says which weights the search
(:mod:`weightcodec.pipelines.auto_model`) may simplify: it chooses their sparsity, ``K`` and
codec (deep codec or a retrieval filter) itself, so a rule there gives only ``match`` and
``method``. ``raw`` rules keep their weights exact.

The training hook is a ``module:function`` entry point. The recipe's own folder is searched
first, so a hook living beside the recipe needs no installation.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import sys
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .codecs import deep, weightless
from .errors import EncodeError
from .simplify import cluster

__all__ = [
    "METHODS",
    "DEFAULT_CLUSTERS",
    "PRUNED",
    "CLUSTERED",
    "Rule",
    "Recipe",
    "AutoRequest",
    "parse_recipe",
    "load_recipe",
    "as_recipe",
    "recipe_from_options",
    "clusters_asked",
    "load_entry_point",
    "load_hook",
]

# Shared values per layer when a rule does not say: 5-bit codes, Han et al.'s choice for FC layers.
DEFAULT_CLUSTERS = 32
# The stage a training hook is called at: after pruning (masks in place), after clustering (ties in place).
PRUNED, CLUSTERED = "pruned", "clustered"

SIMPLIFY_KEYS = ("sparsity", "clusters", "init")
CODEC_KEYS = {"raw": (), "deep": ("index_bits", "entropy"), "weightless": ("t", "filter")}
#: Every method a rule can name, with the rule keys it accepts besides ``match`` and ``method``.
METHODS = {
    "raw": (),
    "deep": SIMPLIFY_KEYS + CODEC_KEYS["deep"],
    "weightless": SIMPLIFY_KEYS + CODEC_KEYS["weightless"],
}
REQUIRED_KEYS = {"raw": ("match",), "deep": ("match",), "weightless": ("match", "t")}
# Name-rule pairs clusters_asked() tries at most: a real model and recipe are far below (1,000
# tensors x 20 rules), and a crafted file must not buy quadratic time with a few MB of header.
MAX_STORED_MATCHES = 100_000
TOP_LEVEL_KEYS = ("rule", "training", "auto")
TRAINING_KEYS = ("hook",)
AUTO_KEYS = ("target_error", "evaluate", "n_valid", "sparsities", "bits")
# Pruning levels and bits per code an [auto] table tries when it does not say.
DEFAULT_AUTO_SPARSITIES = (0.5, 0.75, 0.9, 0.95)
DEFAULT_AUTO_BITS = (2, 3, 4, 5, 6)
MAX_AUTO_BITS = 8


@dataclass(frozen=True)
class Rule:
    """One recipe rule: the parameters it matches and what to do with them.

    Attributes
    ----------
    match : str
        ``fnmatch`` glob on state_dict names (``"layer*.conv?.weight"``).
    method : str
        A key of :data:`METHODS`.
    sparsity : float
        Fraction of the weights pruned by magnitude before clustering, in ``[0, 1)``.
    clusters : int
        Number of shared values ``K`` after clustering.
    init : str
        k-means initialisation (``"linear"``, ``"density"``, ``"random"``).
    codec_params : dict
        Keyword arguments for the codec's ``encode`` (``index_bits``, ``entropy``, ``t``,
        ``filter``), only those the recipe sets.
    """

    match: str
    method: str
    sparsity: float = 0.0
    clusters: int = DEFAULT_CLUSTERS
    init: str = "linear"
    codec_params: dict[str, Any] = field(default_factory=dict)

    @property
    def simplifies(self) -> bool:
        """Whether matched tensors are pruned and clustered (every method but ``raw``)."""
        return self.method != "raw"


@dataclass(frozen=True)
class AutoRequest:
    """A recipe's ``[auto]`` table: the smallest file whose validation error stays within a target.

    Attributes
    ----------
    target_error : float or None
        Percent, on ``evaluate``; ``--target-error`` gives it on the command line instead.
    evaluate : str or None
        ``module:function`` called as ``evaluate(model)``, returning the validation error in percent.
    n_valid : int or None
        Validation examples ``evaluate`` uses: the budget keeps one standard error below the target.
    sparsities : tuple of float
        Pruning levels tried in order, the same for every searched weight.
    bits : tuple of int
        Bits per code tried for each weight (``K = 2**bits``).
    """

    target_error: float | None = None
    evaluate: str | None = None
    n_valid: int | None = None
    sparsities: tuple[float, ...] = DEFAULT_AUTO_SPARSITIES
    bits: tuple[int, ...] = DEFAULT_AUTO_BITS


@dataclass(frozen=True)
class Recipe:
    """An ordered list of rules and an optional training hook (``"module:function"``).

    Attributes
    ----------
    rules : tuple of Rule
        First match wins.
    hook : str or None
        Entry point called as ``hook(model, stage)`` with ``stage`` :data:`PRUNED` or :data:`CLUSTERED`.
    folder : pathlib.Path or None
        Where the recipe file lives; searched first when importing the hook.
    require_matches : bool
        Whether a rule that matches no parameter is an error (it is, except in the default
        recipe, which also applies to models with nothing to compress).
    auto : AutoRequest or None
        The ``[auto]`` table, if any: the automatic search instead of the rules' settings.
    """

    rules: tuple[Rule, ...]
    hook: str | None = None
    folder: Path | None = None
    require_matches: bool = True
    auto: AutoRequest | None = None

    def assign(self, names: Iterable[str]) -> dict[str, Rule]:
        """The rule of each name that some rule matches (first match wins), in ``names`` order.

        Raises
        ------
        EncodeError
            If a rule matches none of ``names``; lists every such rule and the names.

        Examples
        --------
        >>> r = parse_recipe({"rule": [{"match": "fc*", "method": "deep"}]})
        >>> {name: rule.method for name, rule in r.assign(["fc1.weight", "conv.weight"]).items()}
        {'fc1.weight': 'deep'}
        """
        names = list(names)
        assigned = {}
        for name in names:
            rule = next((r for r in self.rules if fnmatch.fnmatchcase(name, r.match)), None)
            if rule is not None:
                assigned[name] = rule
        unused = [
            f"rule {i} (match {r.match!r})"
            for i, r in enumerate(self.rules, 1)
            if not any(fnmatch.fnmatchcase(n, r.match) for n in names)
        ]
        if unused and self.require_matches:
            raise EncodeError(
                f"recipe {', '.join(unused)} matches no compressible parameter; "
                f"compressible parameters: {_short_list(names)}"
            )
        return assigned

    def to_json(self) -> str:
        """The rules and hook as compact JSON, stored in the file's metadata."""
        return json.dumps(
            {"rule": [_rule_to_dict(r) for r in self.rules], "training": {"hook": self.hook}},
            separators=(",", ":"),
            sort_keys=True,
        )


# ----------------------------------------------------------------------------- parsing


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a TOML recipe file.

    Raises
    ------
    EncodeError
        If the file is missing or unreadable, is not valid TOML, or breaks a rule of
        :func:`parse_recipe`; the message starts with the path.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EncodeError(f"recipe {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EncodeError(f"recipe {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EncodeError(f"recipe {path}: not valid TOML: {exc}") from None
    try:
        return parse_recipe(table, folder=path.resolve().parent)
    except EncodeError as exc:
        raise EncodeError(f"recipe {path}: {exc}") from None


def parse_recipe(table: Mapping[str, Any], *, folder: Path | None = None) -> Recipe:
    """Validate a recipe given as a parsed TOML table (or an equivalent dict).

    Parameters
    ----------
    table : mapping
        ``{"rule": [ {...}, ... ], "training": {"hook": "module:function"}}``.
    folder : pathlib.Path, optional
        Searched first when the hook is imported.

    Returns
    -------
    Recipe

    Raises
    ------
    EncodeError
        Listing every problem at once: unknown keys (with the valid ones), missing keys,
        values of the wrong type or range, ``t`` too small for ``clusters``.

    Examples
    --------
    >>> parse_recipe({"rule": [{"match": "*", "method": "deep", "clusters": 16}]}).rules[0].clusters
    16
    >>> parse_recipe({"rule": [{"match": "*", "method": "deep", "t": 8}]})
    Traceback (most recent call last):
    ...
    weightcodec.errors.EncodeError: rule 1: key 't' does not apply to method 'deep'; its keys: ['match', 'method', 'sparsity', 'clusters', 'init', 'index_bits', 'entropy']
    """
    if not isinstance(table, Mapping):
        raise EncodeError(f"a recipe is a table with keys {list(TOP_LEVEL_KEYS)}, got {type(table).__name__}")
    problems = _unknown_keys("recipe", table, TOP_LEVEL_KEYS)
    raw_rules = table.get("rule", [])
    if not isinstance(raw_rules, list) or not raw_rules:
        problems.append("a recipe needs at least one [[rule]] table")
        raw_rules = []
    rules = []
    for index, raw_rule in enumerate(raw_rules, 1):
        rule, rule_problems = _parse_rule(index, raw_rule)
        problems += rule_problems
        rules.append(rule)
    hook, hook_problems = _parse_training(table.get("training", {}))
    problems += hook_problems
    auto, auto_problems = _parse_auto(table["auto"]) if "auto" in table else (None, [])
    problems += auto_problems
    if "auto" in table:
        problems += [
            f"rule {i}: with [auto] the search chooses {sorted(set(raw) - {'match', 'method'})} itself; "
            "give only 'match' and 'method'"
            for i, (raw, r) in enumerate(zip(raw_rules, rules), 1)
            if r is not None and set(raw) - {"match", "method"}
        ]
    if problems:
        raise EncodeError("; ".join(problems))
    return Recipe(tuple(rules), hook, folder, auto=auto)


def as_recipe(recipe: Recipe | Mapping | str | os.PathLike | None) -> Recipe:
    """Accept a :class:`Recipe`, a dict, a path to a TOML file, or None (the default recipe).

    The default recipe clusters every compressible weight to :data:`DEFAULT_CLUSTERS` values
    with the deep codec, without pruning; unlike a written recipe, it accepts a model with no
    compressible weight (everything is then stored raw).
    """
    if recipe is None:
        return replace(parse_recipe({"rule": [{"match": "*", "method": "deep"}]}), require_matches=False)
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Mapping):
        return parse_recipe(recipe)
    if isinstance(recipe, (str, os.PathLike)):
        return load_recipe(recipe)
    raise EncodeError(f"recipe must be a Recipe, a dict, a TOML path or None, got {type(recipe).__name__}")


def clusters_asked(recipe_json: str, names: Iterable[str]) -> dict[str, int]:
    """The ``clusters`` the recipe stored in a file's metadata (:meth:`Recipe.to_json`) asked for each name.

    Names that no pruning-and-clustering rule matches are left out. ``inspect`` shows these
    beside the number of shared values each tensor really holds.

    Raises
    ------
    EncodeError
        If ``recipe_json`` is not a valid recipe, or if matching it would try more than
        :data:`MAX_STORED_MATCHES` name-rule pairs (a file can claim any number of both, and
        reading one must cost time in proportion to its size).

    Examples
    --------
    >>> text = parse_recipe({"rule": [{"match": "fc1.*", "method": "raw"}, {"match": "*", "method": "deep"}]}).to_json()
    >>> clusters_asked(text, ["fc1.weight", "fc2.weight"])
    {'fc2.weight': 32}
    """
    try:
        table = json.loads(recipe_json)
    except (ValueError, RecursionError) as exc:
        raise EncodeError(f"the stored recipe is not valid JSON: {exc}") from None
    recipe = replace(parse_recipe(table), require_matches=False)
    names = list(names)
    if len(recipe.rules) * len(names) > MAX_STORED_MATCHES:
        raise EncodeError(
            f"the stored recipe's {len(recipe.rules)} rules for {len(names)} tensors are more than "
            f"{MAX_STORED_MATCHES} name-rule pairs to match"
        )
    return {name: rule.clusters for name, rule in recipe.assign(names).items() if rule.simplifies}


def recipe_from_options(method: str, **options: Any) -> Recipe:
    """A one-rule recipe applying ``method`` to every compressible tensor (the CLI's ``encode``).

    Options that are None are left at their defaults; the others are checked as recipe keys.

    Examples
    --------
    >>> recipe_from_options("deep", clusters=8, sparsity=None).rules[0].clusters
    8
    """
    rule = {"match": "*", "method": method, **{k: v for k, v in options.items() if v is not None}}
    return parse_recipe({"rule": [rule]})


def _parse_rule(index: int, raw_rule: Any) -> tuple[Rule | None, list[str]]:
    where = f"rule {index}"
    if not isinstance(raw_rule, Mapping):
        return None, [f"{where} must be a table, got {type(raw_rule).__name__}"]
    method = raw_rule.get("method")
    if method not in METHODS:
        return None, [f"{where}: method must be one of {list(METHODS)}, got {method!r}"]
    valid = ("match", "method") + METHODS[method]
    problems = [
        f"{where}: key {key!r} does not apply to method {method!r}; its keys: {list(valid)}"
        if key in _ALL_RULE_KEYS
        else f"{where}: unknown key {key!r}; valid keys: {list(valid)}"
        for key in raw_rule
        if key not in valid
    ]
    problems += [f"{where}: method {method!r} needs key {key!r}" for key in REQUIRED_KEYS[method] if key not in raw_rule]
    values = {key: raw_rule[key] for key in valid if key in raw_rule and key != "method"}
    for key, value in values.items():
        problem = _VALIDATORS[key](value)
        if problem:
            problems.append(f"{where}: {key} {problem}, got {value!r}")
    if problems:
        return None, problems
    rule = Rule(
        match=values["match"],
        method=method,
        sparsity=float(values.get("sparsity", 0.0)),
        clusters=values.get("clusters", DEFAULT_CLUSTERS),
        init=values.get("init", "linear"),
        codec_params={key: values[key] for key in CODEC_KEYS[method] if key in values},
    )
    return rule, _check_sizes(where, rule)


def _check_sizes(where: str, rule: Rule) -> list[str]:
    """Limits that tie two keys together: K against the deep codebook, t against K."""
    if rule.method == "deep" and rule.clusters > deep.MAX_CLUSTERS:
        return [f"{where}: clusters={rule.clusters} is more than the deep codec stores ({deep.MAX_CLUSTERS})"]
    t = rule.codec_params.get("t")
    if t is None:
        return []
    try:
        needed = weightless.smallest_t(rule.clusters, 0, 0)
    except EncodeError as exc:
        return [f"{where}: clusters={rule.clusters}: {exc}"]
    if t < needed:
        return [f"{where}: t={t} is too small for clusters={rule.clusters}: {2**t} cell values, need t >= {needed}"]
    return []


def _parse_training(training: Any) -> tuple[str | None, list[str]]:
    if not isinstance(training, Mapping):
        return None, [f"[training] must be a table, got {type(training).__name__}"]
    problems = _unknown_keys("[training]", training, TRAINING_KEYS)
    hook = training.get("hook")
    if hook is not None and not (isinstance(hook, str) and _is_entry_point(hook)):
        problems.append(f"[training] hook must be 'module:function', got {hook!r}")
    return hook, problems


def _parse_auto(table: Any) -> tuple[AutoRequest | None, list[str]]:
    if not isinstance(table, Mapping):
        return None, [f"[auto] must be a table, got {type(table).__name__}"]
    problems = _unknown_keys("[auto]", table, AUTO_KEYS)
    checks = {
        "target_error": lambda v: None if _is_number(v) and 0 < v < 100 else "must be a number of percent in (0, 100)",
        "evaluate": lambda v: None if isinstance(v, str) and _is_entry_point(v) else "must be 'module:function'",
        "n_valid": _check_positive_int,
        "sparsities": lambda v: None if isinstance(v, list) and v and all(_check_sparsity(x) is None for x in v)
        and v == sorted(set(v)) else "must be a non-empty increasing list of numbers in [0, 1)",
        "bits": lambda v: None if isinstance(v, list) and v and all(_is_int(x) and 1 <= x <= MAX_AUTO_BITS for x in v)
        else f"must be a non-empty list of integers in [1, {MAX_AUTO_BITS}]",
    }  # fmt: skip
    problems += [f"[auto] {key} {checks[key](value)}, got {value!r}" for key, value in table.items()
                 if key in checks and checks[key](value)]  # fmt: skip
    if problems:
        return None, problems
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in table.items()}
    return AutoRequest(**values), []


def _is_entry_point(spec: str) -> bool:
    module_name, _, function_name = spec.partition(":")
    return bool(module_name) and bool(function_name) and ":" not in function_name


def _unknown_keys(where: str, table: Mapping, valid: tuple[str, ...]) -> list[str]:
    return [f"{where}: unknown key {key!r}; valid keys: {list(valid)}" for key in table if key not in valid]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_match(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty glob string"


def _check_sparsity(value: Any) -> str | None:
    return None if _is_number(value) and 0 <= value < 1 else "must be a number in [0, 1)"


def _check_positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 1 else "must be an integer >= 1"


def _check_name(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _check_init(value: Any) -> str | None:
    return None if value in cluster.INITS else f"must be one of {sorted(cluster.INITS)}"


def _check_index_bits(value: Any) -> str | None:
    return None if value == "auto" or (_is_int(value) and value >= 1) else "must be 'auto' or an integer >= 1"


# Each rule key -> a check returning None when the value is fine, else what is wrong.
_VALIDATORS: dict[str, Callable[[Any], str | None]] = {
    "match": _check_match,
    "sparsity": _check_sparsity,
    "clusters": _check_positive_int,
    "init": _check_init,
    "t": _check_positive_int,
    "index_bits": _check_index_bits,
    "filter": _check_name,
    "entropy": _check_name,
}
_ALL_RULE_KEYS = frozenset(_VALIDATORS) | {"method"}


def _rule_to_dict(rule: Rule) -> dict[str, Any]:
    as_dict = asdict(rule)
    params = as_dict.pop("codec_params")
    if not rule.simplifies:
        return {"match": rule.match, "method": rule.method}
    return {**as_dict, **params}


def _short_list(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"[{shown}{more}]"


# ----------------------------------------------------------------------------- entry points


def load_entry_point(spec: str, *, search: Iterable[Path] = (), what: str = "entry point") -> Callable[..., Any]:
    """Import the callable named by ``spec`` (``"package.module:function"``).

    Parameters
    ----------
    spec : str
        ``module:function``; the module is imported with :func:`importlib.import_module`.
    search : iterable of pathlib.Path
        Folders put first on ``sys.path`` for the import only (removed again afterwards), so that
        a module beside a recipe or in the working folder needs no installation.
    what : str
        What the callable is for, used in error messages ("training hook", "model").

    Raises
    ------
    EncodeError
        If ``spec`` is not ``module:function``, the module cannot be imported or has no such
        callable.
    """
    if not _is_entry_point(spec):
        raise EncodeError(f"{what} {spec!r}: expected 'module:function'")
    module_name, _, function_name = spec.partition(":")
    added = [str(folder) for folder in search if str(folder) not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EncodeError(f"{what} {spec!r}: cannot import {module_name!r}: {exc}") from None
    finally:
        for folder in added:
            sys.path.remove(folder)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise EncodeError(f"{what} {spec!r}: module {module_name!r} has no function {function_name!r}")
    return function


def load_hook(recipe: Recipe) -> Callable[..., Any] | None:
    """Import the recipe's training hook (searching the recipe's folder first), or None without one."""
    if recipe.hook is None:
        return None
    return load_entry_point(recipe.hook, search=[recipe.folder] if recipe.folder else [], what="training hook")
