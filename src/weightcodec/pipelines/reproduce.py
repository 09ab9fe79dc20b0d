"""``weightcodec reproduce``: run a paper's method on a LeNet and write the figures as JSON.

:func:`reproduce` loads MNIST (:mod:`.data`), runs the method's pipeline, which writes a real
``.wcz`` file and evaluates the model decoded from it, and writes
``<results_dir>/reproduce-<model>-<method>.json`` (``...-quick.json`` for ``quick=True``, so a
smoke test never overwrites the full results). Methods are dispatched through :data:`METHODS`.
"""

from __future__ import annotations

import json
import platform
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from .. import __version__ as weightcodec_version
from ..container import atomic_write_bytes
from ..errors import WeightcodecError
from . import auto, deep_compression, weightless
from .settings import DEEP, quick_deep
from .data import Mnist, load_mnist
from .models import MODELS

__all__ = ["METHODS", "PAPER", "THREADS", "reproduce", "run_deep"]

# Table 1 of Deep Compression (reference.md §2.2): test error in percent and compression ratio.
PAPER = {
    ("lenet300", "deep"): {"baseline_test_error": 1.64, "test_error": 1.58, "ratio": 40.0},
    ("lenet5", "deep"): {"baseline_test_error": 0.80, "test_error": 0.74, "ratio": 39.0},
}

Method = Callable[..., dict]


def run_deep(model: str, mnist: Mnist, out_path: Path, *, quick: bool, seed: int, progress: bool) -> dict:
    """Deep Compression of ``model`` with its settings from :data:`.settings.DEEP`."""
    settings = quick_deep(DEEP[model]) if quick else DEEP[model]
    metadata = {"model": model, "method": "deep", "seed": str(seed)}
    return deep_compression.run(model, mnist, settings, out_path, seed=seed, progress=progress, metadata=metadata)


METHODS: dict[str, Method] = {
    "deep": run_deep,
    "weightless": weightless.run_reproduce,  # the largest layer, as in the paper
    "weightless-all": partial(weightless.run_reproduce, every_layer=True),  # every weight layer, in order
    "auto": auto.run_reproduce,  # per-layer choices, the smallest file within the error target (validation)
}

#: Intra-op threads ``reproduce`` runs with: summation order in torch's kernels depends on the
#: thread count, and training amplifies the last-bit differences into different choices (a run
#: with 2 threads chose another t than with 1). One thread makes the file the same on every machine.
THREADS = 1


def reproduce(
    model: str,
    method: str,
    *,
    quick: bool = False,
    seed: int = 0,
    results_dir: Path = Path("benchmarks/results"),
    out_path: Path | None = None,
    progress: bool = True,
    data: Path | None = None,
    threads: int = THREADS,
) -> dict:
    """Reproduce ``method`` on ``model``: train, compress to a file, decode, evaluate, write JSON.

    Parameters
    ----------
    model : {"lenet300", "lenet5"}
    method : str
        A key of :data:`METHODS`.
    quick : bool
        A small training budget (a subset of MNIST, one or two epochs per stage): a smoke test
        that finishes in under two minutes, with a much worse error than the full run.
    seed : int
        Seeds the initial weights, the data order and k-means.
    results_dir : pathlib.Path
        Where the JSON goes (created if needed).
    out_path : pathlib.Path, optional
        The compressed model; defaults to the JSON's path with ``.wcz``.
    progress : bool
        Show progress bars.
    data : pathlib.Path, optional
        The user's MNIST (see :func:`.data.load_mnist`); otherwise the verified wheel copy.
    threads : int
        PyTorch's intra-op threads for the run (restored afterwards). The default,
        :data:`THREADS`, gives the same file on every machine; the count is written to the JSON.

    Returns
    -------
    dict
        What was written to the JSON: the pipeline's figures (``baseline_test_error``,
        ``test_error`` of the decoded model, ``original_bytes``, ``file_bytes``, ``ratio``,
        ``layers``...), plus ``model``, ``method``, ``quick``, ``seed``, ``seconds``, the
        ``paper``'s figures, ``json_path`` and ``wcz_path``.

    Raises
    ------
    WeightcodecError
        For an unknown model or method (the message lists the valid ones); DataError when
        MNIST cannot be obtained.
    """
    if model not in MODELS:
        raise WeightcodecError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    if method not in METHODS:
        raise WeightcodecError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    start = time.perf_counter()
    results_dir = Path(results_dir)
    stem = f"reproduce-{model}-{method}{'-quick' if quick else ''}"
    json_path = results_dir / f"{stem}.json"
    out_path = Path(out_path) if out_path is not None else results_dir / f"{stem}.wcz"
    results_dir.mkdir(parents=True, exist_ok=True)
    mnist = load_mnist(data)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        figures = METHODS[method](model, mnist, out_path, quick=quick, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)
    result = {
        "model": model,
        "method": method,
        "quick": quick,
        "seed": seed,
        **figures,
        "seconds": round(time.perf_counter() - start, 1),
        "paper": PAPER.get((model, method)),
        "data": mnist.source,
        "environment": _environment(threads),
        "json_path": str(json_path),
        "wcz_path": str(out_path),
    }
    atomic_write_bytes(json_path, (json.dumps(result, indent=2) + "\n").encode())
    return result


def _environment(threads: int) -> dict:
    return {
        "weightcodec": weightcodec_version,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": threads,
        "threads_note": f"reproduce sets torch's intra-op threads to {threads} for the run ({THREADS} by default, "
        "so that the file is the same whatever the machine's thread count)",
    }
