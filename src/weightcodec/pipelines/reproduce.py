"""``weightcodec reproduce``: run a paper's method on a LeNet and write the figures as JSON.

:func:`reproduce` loads MNIST (:mod:`.data`), runs the method's pipeline, which writes a real
``.wcz`` file and evaluates the model decoded from it, and writes
``<results_dir>/reproduce-<model>-<method>.json`` (``...-quick.json`` for ``quick=True``, so a
smoke test never overwrites the full results). Methods are dispatched through :data:`METHODS`.

It runs in the job of :func:`weightcodec.distributed.launch` (``weightcodec reproduce`` opens
it; a plain single CPU process otherwise). Under ``torchrun`` every rank runs the same pipeline
on its shard of each batch; rank 0 writes the results, the other ranks write theirs into a
private temporary folder that is deleted at the end, and the sha256 of every rank's ``.wcz``
file is compared: the result reports them (``file_sha256_by_rank``) and ``world_size``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from .. import __version__ as weightcodec_version
from .. import distributed
from ..container import atomic_write_bytes
from ..errors import WeightcodecError
from . import auto, deep_compression, weightless
from .data import Mnist, load_mnist
from .models import MODELS
from .settings import DEEP, quick_deep

__all__ = ["METHODS", "PAPER", "FULL_RUNS", "THREADS", "reproduce", "run_deep", "format_summary"]

# Table 1 of Deep Compression (docs/references.md §2.2): test error in percent and compression ratio.
PAPER = {
    ("lenet300", "deep"): {"baseline_test_error": 1.64, "test_error": 1.58, "ratio": 40.0},
    ("lenet5", "deep"): {"baseline_test_error": 0.80, "test_error": 0.74, "ratio": 39.0},
}

# The committed full runs (benchmarks/results/reproduce-<model>-<method>.json, seed 0), shown beside a
# quick run's figures; packaged here so an installed weightcodec has them without the repository.
FULL_RUNS = {
    ("lenet300", "deep"): {"baseline_test_error": 0.93, "test_error": 1.27, "file_bytes": 19734, "ratio": 54.04},
    ("lenet300", "weightless"): {"baseline_test_error": 0.93, "test_error": 1.29, "file_bytes": 14568, "ratio": 73.2},
    ("lenet5", "deep"): {"baseline_test_error": 0.52, "test_error": 0.59, "file_bytes": 35186, "ratio": 49.01},
    ("lenet5", "weightless"): {"baseline_test_error": 0.52, "test_error": 0.75, "file_bytes": 14468, "ratio": 119.18},
    ("lenet300", "auto"): {"baseline_test_error": 0.93, "test_error": 1.6, "file_bytes": 5397, "ratio": 197.6},
    ("lenet5", "auto"): {"baseline_test_error": 0.52, "test_error": 0.73, "file_bytes": 7902, "ratio": 218.21},
}
# The figures format_summary() prints: (result key, label, format of one value).
SUMMARY_FIGURES = (
    ("baseline_test_error", "baseline test error", "{:.2f} %"),
    ("test_error", "test error (decoded file)", "{:.2f} %"),
    ("file_bytes", "file", "{:,} B"),
    ("ratio", "ratio vs float32", "{:.1f}x"),
)

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
        ``paper``'s figures, ``world_size``, ``device``, ``backend``, ``file_sha256_by_rank``,
        ``json_path`` and ``wcz_path`` (the paths rank 0 wrote).

    Raises
    ------
    WeightcodecError
        For an unknown model or method (the message lists the valid ones); DataError when
        MNIST cannot be obtained; WeightcodecError too if the ranks of a job wrote different files.
    """
    if model not in MODELS:
        raise WeightcodecError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    if method not in METHODS:
        raise WeightcodecError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    start = time.perf_counter()
    runtime = distributed.current()
    stem = f"reproduce-{model}-{method}{'-quick' if quick else ''}"
    json_path = Path(results_dir) / f"{stem}.json"
    out_path = Path(out_path) if out_path is not None else Path(results_dir) / f"{stem}.wcz"
    with ExitStack() as scratch:
        scratch.callback(torch.set_num_threads, torch.get_num_threads())  # restored however the run ends
        torch.set_num_threads(threads)
        if not runtime.is_main:  # the same pipeline, its files out of rank 0's way
            folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix=f"weightcodec-rank{runtime.rank}-")))
            results_dir, out_path = folder, folder / out_path.name
        Path(results_dir).mkdir(parents=True, exist_ok=True)
        mnist = load_mnist(data, progress=progress and runtime.is_main)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            figures = METHODS[method](model, mnist, out_path, quick=quick, seed=seed, progress=progress and runtime.is_main)
        finally:
            torch.set_num_threads(previous_threads)
        digests = distributed.gather_object(hashlib.sha256(out_path.read_bytes()).hexdigest())
    if len(set(digests)) > 1:
        raise WeightcodecError(
            f"the ranks of this job wrote different files (sha256 by rank: {digests}); it is a bug, please report it"
        )
    result = {
        "model": model,
        "method": method,
        "quick": quick,
        "seed": seed,
        **figures,
        "seconds": round(time.perf_counter() - start, 1),
        "paper": PAPER.get((model, method)),
        "data": mnist.source,
        **runtime.describe(),
        "file_sha256_by_rank": digests,
        "environment": _environment(threads),
        "json_path": str(json_path),
        "wcz_path": str(out_path),
    }
    if runtime.is_main:
        atomic_write_bytes(json_path, (json.dumps(result, indent=2) + "\n").encode())
    return result


def format_summary(result: dict) -> str:
    """A :func:`reproduce` result as a short table: this run beside the committed full run and the paper.

    Examples
    --------
    >>> print(format_summary({"model": "lenet5", "method": "deep", "quick": True, "baseline_test_error": 3.5,
    ...                       "test_error": 4.13, "file_bytes": 41234, "ratio": 41.8181, "seconds": 80.0,
    ...                       "json_path": "r.json", "wcz_path": "r.wcz"}))
    lenet5 --method deep --quick: a smoke run on a small training budget; its errors are far above a full run's
    figure                     this run  full run (committed)   paper
    baseline test error          3.50 %                0.52 %  0.80 %
    test error (decoded file)    4.13 %                0.59 %  0.74 %
    file                       41,234 B              35,186 B       -
    ratio vs float32              41.8x                 49.0x   39.0x
    took 80 s; wrote r.json and r.wcz
    """
    key = (result["model"], result["method"])
    columns = {"this run": result, "full run (committed)": FULL_RUNS.get(key, {}), "paper": PAPER.get(key) or {}}
    rows = [["figure", *columns]]
    for name, label, form in SUMMARY_FIGURES:
        rows.append([label, *(form.format(figures[name]) if name in figures else "-" for figures in columns.values())])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    kind = ": a smoke run on a small training budget; its errors are far above a full run's" if result["quick"] else ""
    title = f"{result['model']} --method {result['method']}{' --quick' if result['quick'] else ''}{kind}"
    processes = f" on {result['world_size']} processes ({result['backend']})" if result.get("world_size", 1) > 1 else ""
    footer = f"took {result['seconds']:.0f} s{processes}; wrote {result['json_path']} and {result['wcz_path']}"
    return "\n".join([title, *table, footer])


def _environment(threads: int) -> dict:
    return {
        "weightcodec": weightcodec_version,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": threads,
        "threads_note": f"reproduce sets torch's intra-op threads to {threads} for the run ({THREADS} by default, "
        "so that the file is the same whatever the machine's thread count)",
    }
