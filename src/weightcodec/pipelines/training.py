"""Train, evaluate and retrain the LeNets on MNIST, deterministically, with optional progress bars.

* :func:`train` runs any model over an :class:`ArrayLoader` with the optimiser and learning-rate
  schedule of a :class:`TrainConfig`. ``train_only`` restricts training to some layers (the
  others are frozen for the call and unfrozen afterwards): Weightless retrains only the layers
  after the one it just encoded (:func:`layers_after`). ``on_step`` is called after every
  optimiser step (dynamic network surgery updates its masks there).
* :func:`evaluate` gives the error in percent.
* :func:`train_baseline` trains a model from :data:`~.models.MODELS` or loads it from the
  checkpoint cache (``<cache>/checkpoints``), keyed by model, seed and the training settings.

In a job of several processes (:mod:`weightcodec.distributed`, under ``torchrun``) :func:`train`
gives each rank its shard of every global batch and trains through DistributedDataParallel, so
the ranks take the same optimiser steps as one process would on the same global batches (up to
the order of float additions); the model goes to the job's device there, the batches follow it.

Masks (:mod:`weightcodec.simplify.prune`) and shared weights (:mod:`~weightcodec.simplify.cluster`)
live in the modules themselves, so this loop knows nothing about them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..errors import WeightcodecError
from .data import Mnist, cache_dir
from .models import IMAGE_SIDE, build_model

__all__ = [
    "TrainConfig",
    "ArrayLoader",
    "translate",
    "train_loader",
    "OPTIMIZERS",
    "SCHEDULES",
    "train",
    "evaluate",
    "layers_after",
    "train_baseline",
    "checkpoint_path",
]

EVAL_BATCH = 1000


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Attributes
    ----------
    epochs : int
        Passes over the training images.
    lr : float
        Initial learning rate.
    optimizer : {"sgd", "adam"}
        SGD uses ``momentum`` (Nesterov off, as in Caffe); Adam ignores it.
    momentum, weight_decay : float
        L2 weight decay (Han et al. 2015: L2 works best for pruning).
    batch_size : int
    schedule : {"cosine", "constant"}
        Cosine decay to zero over all steps, or a constant rate.
    subset : int, optional
        Train on the first ``subset`` training images only (quick runs).
    shift : int
        Data augmentation: each training image is translated by a random whole number of pixels
        in ``[-shift, shift]`` along each axis (zeros fill in). 0 turns it off.
    """

    epochs: int = 20
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    schedule: str = "cosine"
    subset: int | None = None
    shift: int = 0

    def scaled(self, *, lr_factor: float = 1.0, epochs: int | None = None) -> "TrainConfig":
        """A copy with the learning rate multiplied by ``lr_factor`` and optionally other epochs."""
        return replace(self, lr=self.lr * lr_factor, epochs=self.epochs if epochs is None else epochs)


class ArrayLoader:
    """Mini-batches of torch tensors over NumPy arrays, reshuffled each epoch from ``seed``.

    Iterating yields ``(x, y)`` pairs: float32 ``(b, 784)`` and int64 ``(b,)`` tensors. Epoch
    ``e`` draws its permutation (and its translations, with ``shift > 0``) from ``(seed, e)``,
    so a run is reproducible whatever happened before it.

    With ``world_size > 1`` the loader yields rank ``rank``'s share of the epoch, by
    :func:`weightcodec.distributed.shard` (DistributedSampler's rule applied to the permutation),
    in batches of ``ceil(batch_size / world_size)``: step ``k`` of all the ranks together sees the
    images of step ``k`` of a single process (all of them when ``world_size`` divides
    ``batch_size``), each with the same translation.

    Examples
    --------
    >>> loader = ArrayLoader(np.zeros((5, 784), np.float32), np.arange(5), batch_size=2)
    >>> [len(y) for _, y in loader]
    [2, 2, 1]
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        shift: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(x) != len(y) or batch_size < 1 or shift < 0 or not 0 <= rank < world_size:
            raise WeightcodecError(
                f"ArrayLoader: {len(x)} images, {len(y)} labels, batch_size {batch_size}, shift {shift}, "
                f"rank {rank} of {world_size}"
            )
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.batch_size, self.shuffle, self.seed, self.shift = batch_size, shuffle, seed, shift
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    @property
    def rank_batch_size(self) -> int:
        """Images per batch on each rank: ``ceil(batch_size / world_size)``."""
        return _ceil_div(self.batch_size, self.world_size)

    def __len__(self) -> int:
        return _ceil_div(_ceil_div(len(self.x), self.world_size), self.rank_batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = torch.from_numpy(rng.permutation(len(self.x))) if self.shuffle else torch.arange(len(self.x))
        offsets = torch.from_numpy(rng.integers(-self.shift, self.shift + 1, size=(len(self.x), 2)))
        positions = distributed.shard(torch.arange(len(self.x)), rank=self.rank, world_size=self.world_size)
        for start in range(0, len(positions), self.rank_batch_size):
            chosen = positions[start : start + self.rank_batch_size]
            index = order[chosen]
            x = self.x[index]
            if self.shift:
                x = translate(x, offsets[chosen], self.shift)
            yield x, self.y[index]

    def sharded(self, rank: int, world_size: int) -> "ArrayLoader":
        """A copy that yields rank ``rank``'s share of each epoch (same seed, same epoch count)."""
        twin = copy.copy(self)
        if not 0 <= rank < world_size:
            raise WeightcodecError(f"ArrayLoader.sharded: rank {rank} is outside a world of {world_size} processes")
        twin.rank, twin.world_size = rank, world_size
        return twin


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def translate(x: torch.Tensor, offsets: torch.Tensor, shift: int) -> torch.Tensor:
    """Move each flattened 28x28 image of ``x`` by ``offsets[i] = (dy, dx)`` pixels, filling with 0.

    Examples
    --------
    >>> image = torch.zeros(1, 784); image[0, 28 * 5 + 7] = 1.0
    >>> int(translate(image, torch.tensor([[2, -1]]), 2).argmax())  # row 7, column 6
    202
    """
    side = IMAGE_SIDE
    padded = nn.functional.pad(x.reshape(len(x), side, side), (shift, shift, shift, shift))
    grid = torch.arange(side)
    rows = (shift - offsets[:, 0, None] + grid)[:, :, None]  # output row r reads input row r - dy
    cols = (shift - offsets[:, 1, None] + grid)[:, None, :]
    return padded[torch.arange(len(x))[:, None, None], rows, cols].reshape(len(x), side * side)


def train_loader(mnist: Mnist, config: TrainConfig, *, seed: int = 0) -> ArrayLoader:
    """The shuffled training batches ``config`` asks for (its subset, batch size and shift)."""
    x, y = mnist.x_train, mnist.y_train
    if config.subset is not None:
        x, y = x[: config.subset], y[: config.subset]
    return ArrayLoader(x, y, batch_size=config.batch_size, shuffle=True, seed=seed, shift=config.shift)


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
}
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]] = {
    "cosine": lambda opt, steps: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1)),
    "constant": lambda opt, steps: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0),
}


def train(
    model: nn.Module,
    loader: ArrayLoader,
    config: TrainConfig,
    *,
    seed: int = 0,
    train_only: Iterable[str] | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> list[float]:
    """Train ``model`` in place for ``config.epochs`` epochs; return the mean loss of each epoch.

    Parameters
    ----------
    model : torch.nn.Module
    loader : ArrayLoader
        Training batches (shuffled by the loader's own seed).
    config : TrainConfig
    seed : int
        Seeds torch's generator for the call (dropout and the like), without touching the
        caller's global state.
    train_only : iterable of str, optional
        Module names (``"fc2"``) whose parameters are trained; all others are frozen for this
        call. ``None`` trains everything.
    on_step : callable, optional
        Called with the global step number after every optimiser step.
    progress : bool
        Show a tqdm bar.
    desc : str
        The bar's label.

    Raises
    ------
    WeightcodecError
        If ``config`` names an unknown optimiser or schedule, or ``train_only`` names no
        trainable parameter; in a job, if the ranks do not hold the same model when it starts.

    Notes
    -----
    In a job of several processes (:func:`weightcodec.distributed.current`) each rank trains on
    its shard of every batch (:meth:`ArrayLoader.sharded`) through DistributedDataParallel, and
    only rank 0 shows the bar. The batches go to the model's device.
    """
    _check_config(config)
    runtime = distributed.current()
    params = _select_parameters(model, train_only)
    frozen = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in params)]
    optimizer = OPTIMIZERS[config.optimizer](params, config)
    local = loader.sharded(runtime.rank, runtime.world_size) if runtime.world_size > 1 else loader
    scheduler = SCHEDULES[config.schedule](optimizer, config.epochs * len(local))
    device = _device_of(model)
    losses, step = [], 0
    bar = tqdm(total=config.epochs * len(local), desc=desc, disable=not (progress and runtime.is_main), leave=False)
    try:
        for p in frozen:
            p.requires_grad_(False)
        # masks and shared centroids are buffers and parameters of the model: all ranks must agree
        distributed.check_identical(model.state_dict(), f"before {desc}")
        net = distributed.data_parallel(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.train()
            for _ in range(config.epochs):
                total, count = 0.0, 0
                for x, y in local:
                    x, y = x.to(device), y.to(device)
                    loss = nn.functional.cross_entropy(net(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    if on_step is not None:
                        on_step(step)
                    total, count = total + float(loss.detach()) * len(y), count + len(y)
                    bar.update()
                losses.append(total / max(count, 1))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        loader.epoch = local.epoch  # the caller's loader goes on with the next epoch, sharded or not
        bar.close()
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Classification error of ``model`` over ``loader``, in percent (0 to 100).

    Every rank of a job evaluates all of ``loader`` (the batches go to the model's device), so
    every rank gets the same count.
    """
    model.eval()
    device = _device_of(model)
    wrong, count = 0, 0
    for x, y in loader:
        wrong += int((model(x.to(device)).argmax(dim=1) != y.to(device)).sum())
        count += len(y)
    if count == 0:
        raise WeightcodecError("evaluate: the loader yielded no examples")
    return 100.0 * wrong / count


def layers_after(model: nn.Module, layer: str) -> list[str]:
    """Names of the parameterised modules registered after ``layer`` (the layers it feeds).

    Examples
    --------
    >>> from .models import LeNet5
    >>> layers_after(LeNet5(), "conv2")
    ['fc1', 'fc2']
    """
    names = [name for name, module in model.named_modules() if name and any(True for _ in module.parameters(recurse=False))]
    if layer not in names:
        raise WeightcodecError(f"no layer {layer!r}; layers with parameters: {names}")
    return names[names.index(layer) + 1 :]


def checkpoint_path(name: str, config: TrainConfig, seed: int, data_source: str) -> Path:
    """Where the baseline of model ``name`` trained with ``config`` and ``seed`` is cached.

    A baseline trained on another device type or by several processes is not the same model,
    so those runs key their own checkpoints (a single CPU process keeps the plain key).
    """
    runtime = distributed.current()
    key = {"config": asdict(config), "data": data_source}
    if runtime.world_size > 1 or runtime.device.type != "cpu":
        key["runtime"] = {"device": runtime.device.type, "world_size": runtime.world_size}
    settings = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return cache_dir() / "checkpoints" / f"{name}-seed{seed}-e{config.epochs}-{digest}.pt"


def train_baseline(
    name: str, mnist: Mnist, config: TrainConfig, *, seed: int = 0, progress: bool = True, cache: bool = True
) -> nn.Module:
    """The trained baseline of model ``name``: loaded from the checkpoint cache, else trained and cached.

    The model's initial weights and the data order both come from ``seed``; it lives on the
    job's device. In a job, rank 0 alone reads and writes the cache and sends the weights it
    read to the other ranks.
    """
    runtime = distributed.current()
    path = checkpoint_path(name, config, seed, f"{mnist.source.split(' (')[0]}:{len(mnist.x_train)}")
    model = build_model(name, seed=seed)
    if distributed.broadcast_object(cache and path.is_file()):
        if runtime.is_main:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return distributed.broadcast_module_(model.to(runtime.device)).eval()
    model.to(runtime.device)
    train(model, train_loader(mnist, config, seed=seed), config, seed=seed, progress=progress, desc=f"{name} baseline")
    if cache and runtime.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model


def _device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _check_config(config: TrainConfig) -> None:
    problems = []
    if config.optimizer not in OPTIMIZERS:
        problems.append(f"optimizer {config.optimizer!r} (choose from {sorted(OPTIMIZERS)})")
    if config.schedule not in SCHEDULES:
        problems.append(f"schedule {config.schedule!r} (choose from {sorted(SCHEDULES)})")
    if config.epochs < 0 or config.batch_size < 1 or config.lr < 0:
        problems.append(f"epochs={config.epochs}, batch_size={config.batch_size}, lr={config.lr}")
    if problems:
        raise WeightcodecError(f"invalid training settings: {'; '.join(problems)}")


def _select_parameters(model: nn.Module, train_only: Iterable[str] | None) -> list[nn.Parameter]:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if train_only is None:
        return [p for _, p in trainable]
    prefixes = tuple(f"{layer}." for layer in train_only)
    selected = [p for n, p in trainable if n.startswith(prefixes)]
    if not selected:
        raise WeightcodecError(f"train_only={sorted(set(train_only))} selects no trainable parameter of the model")
    return selected
