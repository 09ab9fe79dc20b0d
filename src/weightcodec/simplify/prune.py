"""Pruning: masks that zero weights, kept beside the weights and reapplied on every forward.

Two families, each a small verb over an explicit boolean ``mask`` (True = kept):

* **Magnitude pruning** (Han et al. 2015, "Learning both Weights and Connections"):
  :func:`magnitude_mask` keeps the largest ``|w|``, either by a target *sparsity* (fraction of
  zeros) or by a threshold ``quality x std(w)``. :func:`prune_` installs a mask with
  :func:`torch.nn.utils.prune.custom_from_mask`: the module gets ``<name>_orig`` (a Parameter)
  and ``<name>_mask`` (a buffer) and a forward pre-hook recomputes
  ``<name> = <name>_orig * <name>_mask`` before every forward, so **any** training loop keeps the
  pruned weights exactly zero. Iterating prune -> retrain -> prune narrows the mask (masks are
  combined with logical AND, pruned weights never come back).

* **Dynamic network surgery** (Guo, Yao, Chen, NIPS 2016): :func:`dns_` installs a
  straight-through mask with :mod:`torch.nn.utils.parametrize`. The forward pass uses
  ``w * mask``, but the backward pass gives *every* weight its gradient, so pruned weights keep
  being trained. :func:`dns_update_`, called every few steps, recomputes the mask with two
  thresholds ``a < b`` around ``center = mean|w| + c * std|w|``::

          |w| <  a        a <= |w| < b         b <= |w|
        ----------|-------------------------|------------->  |w|
          pruned  a    mask left as it is   b   kept (spliced back if it was pruned)

  (Guo et al. Eq. 3: ``h(w) = 0, T, 1``; their code uses ``a = 0.9 center``, ``b = 1.1 center``.)

:func:`remove_` makes either kind of mask permanent: the weight becomes a plain Parameter
holding the masked values. It cannot be undone.

Per-layer targets are plain dicts from parameter name (``"fc1.weight"``) to a sparsity or a
quality, applied by :func:`prune_model_` / :func:`dns_model_`.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from ..errors import EncodeError

__all__ = [
    "magnitude_mask",
    "prune_",
    "prune_model_",
    "remove_",
    "remove_model_",
    "is_pruned",
    "mask_of",
    "DNSMask",
    "dns_thresholds",
    "dns_",
    "dns_update_",
    "dns_model_",
    "sparsity_of",
]

DNS_MARGIN = 0.1  # Guo et al.'s reference code puts a, b at 0.9 and 1.1 times the center


# ----------------------------------------------------------------------------- masks


def magnitude_mask(weight: torch.Tensor, *, sparsity: float | None = None, quality: float | None = None) -> torch.Tensor:
    """The mask that keeps the largest-magnitude entries of ``weight``.

    Parameters
    ----------
    weight : torch.Tensor
        Any shape, floating point, finite.
    sparsity : float, optional
        Fraction of entries to prune, in ``[0, 1]``. Exactly ``round(sparsity * n)`` entries are
        pruned (ties broken by position), so the target is hit exactly.
    quality : float, optional
        Han's quality parameter: entries with ``|w| <= quality * std(weight)`` are pruned, the std
        taken over all entries of ``weight`` (zeros included). Must be ``>= 0``.

    Returns
    -------
    torch.Tensor
        Bool tensor of ``weight.shape``; True = kept.

    Raises
    ------
    EncodeError
        If not exactly one of ``sparsity`` / ``quality`` is given, it is out of range, or
        ``weight`` holds NaN or Inf.

    Examples
    --------
    >>> magnitude_mask(torch.tensor([0.1, -3.0, 0.5, 2.0]), sparsity=0.5).tolist()
    [False, True, False, True]
    """
    if (sparsity is None) == (quality is None):
        raise EncodeError("magnitude_mask: give exactly one of sparsity= or quality=")
    _check_finite(weight, "magnitude_mask")
    magnitude = weight.detach().abs()
    if quality is not None:
        if not quality >= 0:
            raise EncodeError(f"magnitude_mask: quality must be >= 0, got {quality}")
        threshold = quality * weight.detach().float().std(correction=0) if weight.numel() > 1 else 0.0
        return magnitude > threshold
    if not 0.0 <= sparsity <= 1.0:
        raise EncodeError(f"magnitude_mask: sparsity must be in [0, 1], got {sparsity}")
    n_keep = weight.numel() - round(sparsity * weight.numel())
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    if n_keep > 0:
        # stable sort: among equal magnitudes the earlier position is pruned first, deterministically
        order = torch.sort(magnitude.flatten(), descending=True, stable=True).indices
        mask[order[:n_keep]] = True
    return mask.view(weight.shape)


def sparsity_of(tensor: torch.Tensor) -> float:
    """Fraction of exact zeros in ``tensor`` (0.0 for an empty tensor)."""
    return 0.0 if tensor.numel() == 0 else float((tensor == 0).sum()) / tensor.numel()


# ----------------------------------------------------------------------------- fixed masks


def is_pruned(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` carries a fixed mask from :func:`prune_`."""
    return hasattr(module, f"{name}_mask") and hasattr(module, f"{name}_orig")


def mask_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The current mask of ``module.<name>`` (fixed or DNS) as a bool tensor; True = kept.

    A tensor without a mask gives ``weight != 0``.
    """
    if is_pruned(module, name):
        return getattr(module, f"{name}_mask").bool()
    dns = _dns_parametrization(module, name)
    if dns is not None:
        return dns.mask.clone()
    return getattr(module, name).detach() != 0


def prune_(module: nn.Module, name: str = "weight", *, mask: torch.Tensor) -> nn.Module:
    """Prune ``module.<name>`` with a fixed ``mask``, reapplied before every forward.

    Parameters
    ----------
    module : torch.nn.Module
        The module holding the parameter.
    name : str
        Parameter name, ``"weight"`` by default.
    mask : torch.Tensor
        Bool (or 0/1) tensor of the parameter's shape; True = kept. If the parameter is already
        pruned, the masks are combined with logical AND: pruned weights never come back.

    Returns
    -------
    torch.nn.Module
        ``module``, now with ``<name>_orig`` (Parameter), ``<name>_mask`` (buffer) and a forward
        pre-hook; ``module.<name>`` equals ``<name>_orig * <name>_mask`` (masked entries exactly 0).

    Raises
    ------
    EncodeError
        If ``mask`` has the wrong shape, the parameter is missing, or it is under DNS. The module
        is left untouched.

    Examples
    --------
    >>> layer = nn.Linear(3, 2)
    >>> _ = prune_(layer, mask=torch.tensor([[True, False, True], [False, True, True]]))
    >>> int((layer.weight == 0).sum())
    2
    """
    weight = _get_tensor(module, name)
    mask = _check_mask(mask, weight, name)
    if _dns_parametrization(module, name) is not None:
        raise EncodeError(f"{name} is under dynamic network surgery; call remove_ first")
    torch_prune.custom_from_mask(module, name, mask.to(weight.dtype))
    return module


def remove_(module: nn.Module, name: str = "weight") -> nn.Module:
    """Make the mask of ``module.<name>`` permanent. This cannot be undone.

    The parameter becomes a plain :class:`torch.nn.Parameter` holding the masked values (pruned
    entries exactly 0); ``<name>_orig``, ``<name>_mask``, the hook (or the DNS parametrization)
    are removed and the values of pruned weights are lost.

    Raises
    ------
    EncodeError
        If ``module.<name>`` has no mask.
    """
    if is_pruned(module, name):
        torch_prune.remove(module, name)
    elif _dns_parametrization(module, name) is not None:
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    else:
        raise EncodeError(f"{type(module).__name__}.{name} has no mask to remove")
    return module


def prune_model_(
    model: nn.Module, targets: Mapping[str, float], *, by: str = "sparsity"
) -> dict[str, torch.Tensor]:
    """Magnitude-prune several parameters of ``model``, each with its own target.

    Parameters
    ----------
    model : torch.nn.Module
    targets : mapping of str to float
        Parameter name as in ``model.named_parameters()`` (``"fc1.weight"``; for an already
        pruned parameter the plain name, not ``"fc1.weight_orig"``) to a sparsity or a quality.
    by : {"sparsity", "quality"}
        What the numbers in ``targets`` mean (see :func:`magnitude_mask`).

    Returns
    -------
    dict of str to torch.Tensor
        The mask now applied to each parameter (combined with any earlier mask).

    Raises
    ------
    EncodeError
        If a name is unknown or ``by`` is invalid (all names are checked before anything changes).
    """
    if by not in ("sparsity", "quality"):
        raise EncodeError(f"prune_model_: by must be 'sparsity' or 'quality', got {by!r}")
    located = _locate_all(model, targets)
    masks = {}
    for full_name, (module, name) in located.items():
        mask = magnitude_mask(getattr(module, name), **{by: targets[full_name]})
        prune_(module, name, mask=mask)
        masks[full_name] = mask_of(module, name)
    return masks


def remove_model_(model: nn.Module) -> list[str]:
    """Make every mask in ``model`` permanent (see :func:`remove_`); return the names. Cannot be undone."""
    removed = []
    for module_name, module in model.named_modules():
        for name in _masked_names(module):
            remove_(module, name)
            removed.append(f"{module_name}.{name}" if module_name else name)
    return removed


# ----------------------------------------------------------------------------- dynamic network surgery


class DNSMask(nn.Module):
    """Straight-through mask for :mod:`torch.nn.utils.parametrize` (dynamic network surgery).

    ``forward(w)`` returns ``w * mask`` exactly, but its gradient with respect to ``w`` is the
    identity, so pruned weights keep receiving updates and may be spliced back.

    Attributes
    ----------
    mask : torch.Tensor
        Bool buffer; True = kept.
    low, high : torch.Tensor
        Scalar buffers, the thresholds ``a < b`` used by :func:`dns_update_`.
    """

    def __init__(self, mask: torch.Tensor, low: float, high: float) -> None:
        super().__init__()
        self.register_buffer("mask", mask.bool().clone())
        self.register_buffer("low", torch.tensor(float(low)))
        self.register_buffer("high", torch.tensor(float(high)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # value: w * mask (w + (0 - w) is exactly 0, w + (w - w) exactly w); gradient: identity
        return weight + (weight * self.mask - weight).detach()


def dns_thresholds(
    weight: torch.Tensor, *, c: float | None = None, sparsity: float | None = None, margin: float = DNS_MARGIN
) -> tuple[float, float]:
    """The thresholds ``(a, b)`` of dynamic network surgery for ``weight``.

    Parameters
    ----------
    weight : torch.Tensor
        The layer's weights (their non-zero entries set the statistics).
    c : float, optional
        Guo et al.'s rate: ``center = mean|w| + c * std|w|`` over the non-zero entries.
    sparsity : float, optional
        Instead of ``c``: ``center`` is the ``sparsity`` quantile of ``|w|``, so that about that
        fraction of the weights ends up pruned.
    margin : float
        ``a = (1 - margin) * center``, ``b = (1 + margin) * center``.

    Returns
    -------
    tuple of float
        ``(a, b)`` with ``0 <= a <= b``.

    Raises
    ------
    EncodeError
        If not exactly one of ``c`` / ``sparsity`` is given, or values are out of range.
    """
    if (c is None) == (sparsity is None):
        raise EncodeError("dns_thresholds: give exactly one of c= or sparsity=")
    if not 0 <= margin < 1:
        raise EncodeError(f"dns_thresholds: margin must be in [0, 1), got {margin}")
    _check_finite(weight, "dns_thresholds")
    magnitude = weight.detach().abs().flatten().double()
    if sparsity is not None:
        if not 0.0 <= sparsity <= 1.0:
            raise EncodeError(f"dns_thresholds: sparsity must be in [0, 1], got {sparsity}")
        center = float(torch.quantile(magnitude, sparsity)) if magnitude.numel() else 0.0
    else:
        nonzero = magnitude[magnitude > 0]
        if nonzero.numel() == 0:
            return 0.0, 0.0
        center = float(nonzero.mean() + c * nonzero.std(correction=0))
    center = max(center, 0.0)
    return (1 - margin) * center, (1 + margin) * center


def dns_(
    module: nn.Module,
    name: str = "weight",
    *,
    c: float | None = None,
    sparsity: float | None = None,
    margin: float = DNS_MARGIN,
) -> DNSMask:
    """Put ``module.<name>`` under dynamic network surgery and compute its first mask.

    The thresholds are fixed now, from the current weights (see :func:`dns_thresholds`); the
    mask is then updated by :func:`dns_update_`. Train with any loop: the forward pass sees
    ``w * mask``, the optimiser updates all of ``w``. Finish with :func:`remove_`.

    Returns
    -------
    DNSMask
        The installed parametrization (its ``mask`` buffer is the current mask).

    Raises
    ------
    EncodeError
        If the parameter is missing, already masked, or the threshold arguments are invalid.

    Examples
    --------
    >>> layer = nn.Linear(4, 4)
    >>> dns = dns_(layer, sparsity=0.5)
    >>> abs(float(dns.mask.float().mean()) - 0.5) <= 0.25
    True
    """
    weight = _get_tensor(module, name)
    if is_pruned(module, name) or _dns_parametrization(module, name) is not None:
        raise EncodeError(f"{type(module).__name__}.{name} already has a mask; call remove_ first")
    low, high = dns_thresholds(weight, c=c, sparsity=sparsity, margin=margin)
    dns = DNSMask(torch.ones_like(weight, dtype=torch.bool), low, high)  # Guo et al. start from T = 1
    _update_mask(dns, weight.detach())
    parametrize.register_parametrization(module, name, dns)
    return dns


def dns_update_(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """Recompute the DNS mask of ``module.<name>`` from its current (unmasked) weights.

    Entries with ``|w| < a`` are pruned, entries with ``|w| >= b`` are kept (spliced back if they
    were pruned), the others keep their state (Guo et al. 2016, Eq. 3).

    Returns
    -------
    torch.Tensor
        The new mask (bool, True = kept).

    Raises
    ------
    EncodeError
        If ``module.<name>`` is not under DNS.
    """
    dns = _dns_parametrization(module, name)
    if dns is None:
        raise EncodeError(f"{type(module).__name__}.{name} is not under dynamic network surgery; call dns_ first")
    _update_mask(dns, module.parametrizations[name].original.detach())
    return dns.mask.clone()


def dns_model_(
    model: nn.Module, targets: Mapping[str, float], *, by: str = "sparsity", margin: float = DNS_MARGIN
) -> dict[str, DNSMask]:
    """Put several parameters under DNS; ``targets`` maps names to a sparsity or a ``c`` (``by="c"``).

    Returns
    -------
    dict of str to DNSMask
        One parametrization per name; pass their modules to :func:`dns_update_` periodically.
    """
    if by not in ("sparsity", "c"):
        raise EncodeError(f"dns_model_: by must be 'sparsity' or 'c', got {by!r}")
    located = _locate_all(model, targets)
    return {
        full_name: dns_(module, name, margin=margin, **{by: targets[full_name]})
        for full_name, (module, name) in located.items()
    }


def _update_mask(dns: DNSMask, weight: torch.Tensor) -> None:
    magnitude = weight.abs()
    dns.mask.copy_((dns.mask & (magnitude >= dns.low)) | (magnitude >= dns.high))


# ----------------------------------------------------------------------------- helpers


def _dns_parametrization(module: nn.Module, name: str) -> DNSMask | None:
    if not parametrize.is_parametrized(module, name):
        return None
    found = [p for p in module.parametrizations[name] if isinstance(p, DNSMask)]
    return found[0] if found else None


def _masked_names(module: nn.Module) -> list[str]:
    names = [n[: -len("_mask")] for n, _ in module.named_buffers(recurse=False) if n.endswith("_mask")]
    names = [n for n in names if is_pruned(module, n)]
    if parametrize.is_parametrized(module):
        names += [n for n in module.parametrizations if _dns_parametrization(module, n) is not None]
    return names


def _get_tensor(module: nn.Module, name: str) -> torch.Tensor:
    tensor = getattr(module, name, None)
    if not isinstance(tensor, torch.Tensor):
        raise EncodeError(f"{type(module).__name__} has no tensor {name!r}")
    return tensor


def _check_mask(mask: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(weight.shape):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise EncodeError(f"{name}: mask shape {shape} does not match the weight's {tuple(weight.shape)}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise EncodeError(f"{name}: mask must be bool or hold only 0 and 1")
    return mask.bool().to(weight.device)


def _check_finite(weight: torch.Tensor, where: str) -> None:
    if weight.is_floating_point() and not bool(torch.isfinite(weight).all()):
        raise EncodeError(f"{where}: weight holds NaN or Inf; train or load a finite model first")


def _locate_all(model: nn.Module, names: Mapping[str, float]) -> dict[str, tuple[nn.Module, str]]:
    modules = dict(model.named_modules())
    located, unknown = {}, []
    for full_name in names:
        module_name, _, name = full_name.rpartition(".")
        module = modules.get(module_name)
        if module is None or not isinstance(getattr(module, name, None), torch.Tensor):
            unknown.append(full_name)
        else:
            located[full_name] = (module, name)
    if unknown:
        known = [n for n, p in model.named_parameters() if p.dim() >= 2]
        raise EncodeError(f"unknown parameters {unknown}; weights of this model: {known}")
    return located
