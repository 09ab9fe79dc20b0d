"""One job, several processes: ``torchrun`` through :mod:`torch.distributed`, and the device a job runs on.

``weightcodec reproduce`` and ``weightcodec compress`` run unchanged under
``torchrun --nproc_per_node N``; each process joins the job with :func:`launch`, which reads
torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) and
opens a process group: **gloo** on CPU, **nccl** on CUDA. What each piece does in the job::

    rank 0          rank 1 ... rank N-1
    data shard 0    data shard r          DistributedSampler's rule (:func:`shard`)
    forward/backward on its shard
    <------ gradients all-reduced ------> DistributedDataParallel (:func:`data_parallel`)
    masks, centroids: computed from identical weights on every rank, then
    <------ digests all-gathered -------> compared (:func:`check_identical`); a mismatch is an error
    writes the file, prints               writes and prints nothing

A single process (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) is the special case: no process group,
:func:`shard` keeps every index, :func:`data_parallel` returns the model itself and the checks
cost nothing, so its results are those of a plain run, byte for byte.

The device (``"auto"``, ``"cpu"``, ``"cuda"``) is chosen once per job by :func:`launch`;
training, pruning and the k-means inputs live there, the codecs stay NumPy on the CPU
(:mod:`weightcodec.tensors` moves each tensor to the host at the encode boundary).
"""

from __future__ import annotations

import gc
import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from .errors import WeightcodecError

__all__ = [
    "DEVICES",
    "BACKENDS",
    "Runtime",
    "current",
    "resolve_device",
    "launch",
    "shard",
    "data_parallel",
    "broadcast_object",
    "broadcast_module_",
    "gather_object",
    "tensor_digests",
    "check_identical",
]

DEVICES = ("auto", "cpu", "cuda")
# torch.distributed's backend for each device type: gloo runs on CPU tensors, nccl on CUDA ones
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


@dataclass(frozen=True)
class Runtime:
    """Where this process stands in its job.

    Attributes
    ----------
    rank : int
        This process, 0 to ``world_size - 1``; rank 0 prints and writes.
    world_size : int
        Processes in the job (1 without torchrun).
    device : torch.device
        Where models are trained.
    backend : str or None
        The process group's backend (``"gloo"``, ``"nccl"``), None for a single process.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that prints and writes files."""
        return self.rank == 0

    def describe(self) -> dict:
        """The figures a result file reports: ``world_size``, ``device`` and ``backend``."""
        return {"world_size": self.world_size, "device": str(self.device), "backend": self.backend}


_ACTIVE: list[Runtime] = [Runtime()]  # the runtime of the innermost launch(); a plain single CPU process outside


def current() -> Runtime:
    """The runtime of the job this process is in (a single CPU process outside :func:`launch`)."""
    return _ACTIVE[-1]


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``--device`` choice: ``auto`` takes CUDA when PyTorch sees a GPU.

    Raises
    ------
    WeightcodecError
        For a name outside :data:`DEVICES`, or ``"cuda"`` on a machine where PyTorch sees no GPU.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name not in DEVICES:
        raise WeightcodecError(f"unknown device {name!r}; choose one of {list(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise WeightcodecError(
            f"device 'cuda' was asked for, but PyTorch {torch.__version__} sees no CUDA GPU "
            f"(built with CUDA {torch.version.cuda}); use --device cpu (or auto), or install a CUDA build of torch"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextmanager
def launch(device: str = "auto") -> Iterator[Runtime]:
    """Join the job torchrun started (if any) on ``device`` for the duration of the block.

    Under torchrun (``WORLD_SIZE > 1``) this opens the default process group, gloo on CPU or
    nccl on CUDA (each process on GPU ``LOCAL_RANK``), and closes it on exit. A process group
    someone else opened is used as it is and left open. Without torchrun nothing is opened.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}

    Yields
    ------
    Runtime
        Also what :func:`current` returns inside the block.

    Raises
    ------
    WeightcodecError
        As :func:`resolve_device`, or if torchrun's environment is incomplete.
    """
    chosen = resolve_device(device)
    opened = False
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
        if missing:
            raise WeightcodecError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start the job with torchrun")
        if chosen.type == "cuda":
            chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(chosen)
        dist.init_process_group(BACKENDS[chosen.type])
        opened = True
    if dist.is_available() and dist.is_initialized():
        runtime = Runtime(dist.get_rank(), dist.get_world_size(), chosen, dist.get_backend())
    else:
        runtime = Runtime(device=chosen)
    _ACTIVE.append(runtime)
    try:
        yield runtime
    finally:
        _ACTIVE.pop()
        if opened:
            gc.collect()  # DDP wrappers left in reference cycles must go while the group lives (gloo aborts otherwise)
            dist.destroy_process_group()


def shard(indices: torch.Tensor, *, rank: int | None = None, world_size: int | None = None) -> torch.Tensor:
    """This rank's share of ``indices``, by the rule of :class:`torch.utils.data.DistributedSampler`.

    The list is padded to a multiple of ``world_size`` by repeating its first entries, then rank
    ``r`` takes every ``world_size``-th entry starting at ``r``: every rank gets the same count,
    and the shares together cover the list. ``rank`` and ``world_size`` default to
    :func:`current`'s.

    Examples
    --------
    >>> shard(torch.arange(5), rank=1, world_size=2).tolist()
    [1, 3, 0]
    """
    runtime = current()
    rank = runtime.rank if rank is None else rank
    world_size = runtime.world_size if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise WeightcodecError(f"shard: rank {rank} is outside a world of {world_size} processes")
    padding = -len(indices) % world_size
    if padding:
        indices = torch.cat([indices, indices[:padding].repeat(-(-padding // max(len(indices), 1)))[:padding]])
    return indices[rank::world_size]


def data_parallel(model: nn.Module) -> nn.Module:
    """``model`` wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` in a job, else itself.

    Call the wrapper for the forward pass and step the optimiser as usual: DDP all-reduces (averages)
    the gradients during ``backward``, so every rank takes the same step. Wrapping copies rank 0's
    parameters and buffers to every rank. Wrap again after the model's parameters change (after
    pruning or clustering), since DDP keeps the ones it saw.
    """
    runtime = current()
    if runtime.world_size == 1:
        return model
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` (any picklable value) on every rank; ``obj`` itself in a single process."""
    if current().world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj: Any) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if current().world_size == 1:
        return [obj]
    gathered = [None] * current().world_size
    dist.all_gather_object(gathered, obj)
    return gathered


@torch.no_grad()
def broadcast_module_(model: nn.Module) -> nn.Module:
    """Copy rank 0's parameters and buffers into ``model`` on every rank, in place."""
    if current().world_size > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    return model


def tensor_digests(state: Mapping[str, torch.Tensor | bytes]) -> dict[str, str]:
    """sha256 of each tensor's dtype, shape and bytes (or of a ``bytes`` value), by name."""
    digests = {}
    for name, value in state.items():
        hasher = hashlib.sha256()
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            hasher.update(f"{value.dtype}{tuple(value.shape)}".encode())
            value = value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b""
        hasher.update(value)
        digests[name] = hasher.hexdigest()
    return digests


def check_identical(state: Mapping[str, torch.Tensor | bytes], what: str) -> None:
    """Check that every rank holds the same tensors (or bytes); a no-op in a single process.

    Pruning masks and shared centroids are computed on every rank from the same weights, by the
    same deterministic code; this all-gathers their digests to prove it, instead of trusting it.

    Raises
    ------
    WeightcodecError
        Naming the tensors that differ and the ranks that disagree with rank 0.
    """
    if current().world_size == 1:
        return
    everyone = gather_object(tensor_digests(state))
    reference = everyone[0]
    differing = sorted({name for digests in everyone[1:] for name in set(digests) | set(reference)
                        if digests.get(name) != reference.get(name)})  # fmt: skip
    if differing:
        ranks = [rank for rank, digests in enumerate(everyone) if digests != reference]
        raise WeightcodecError(
            f"{what}: ranks {ranks} hold different values from rank 0 for {', '.join(differing)}; "
            "every rank must train the same model: wrap it with weightcodec.distributed.data_parallel "
            "so that gradients are all-reduced, and seed every random choice"
        )
