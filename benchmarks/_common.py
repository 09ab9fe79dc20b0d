"""What the benchmark scripts share: synthetic layers, timing, the machine's description, writing results.

The scripts run as ``python benchmarks/bench_<name>.py``, so this folder is on ``sys.path``
and they import this module as ``_common``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_layer(shape: tuple[int, ...], density: float, clusters: int, seed: int) -> np.ndarray:
    """A pruned, clustered float32 layer with exactly ``round(density * size)`` non-zeros.

    Uniformly random positions; values drawn uniformly from ``clusters`` random centroids of
    either sign with magnitudes in [0.01, 0.2). A retrieval structure's size, speed and
    false-positive rate depend only on these counts, not on which positions are non-zero.
    """
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    positions = rng.choice(size, size=round(density * size), replace=False)
    centroids = np.sort(rng.uniform(0.01, 0.2, clusters) * rng.choice([-1.0, 1.0], clusters)).astype(np.float32)
    layer = np.zeros(size, dtype=np.float32)
    layer[positions] = centroids[rng.integers(0, clusters, positions.size)]
    return layer.reshape(shape)


def timed(step: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``step()``; return its result and the wall-clock seconds it took."""
    start = time.perf_counter()
    result = step()
    return result, time.perf_counter() - start


def dense_write(size: int) -> np.ndarray:
    """Allocate and zero a float32 layer: the memory-bandwidth floor of any decoder that returns one."""
    out = np.empty(size, dtype=np.float32)
    out[:] = 0
    return out


def machine(**extra: Any) -> dict:
    """CPU, core and numba thread counts, the load average now, and library versions (plus ``extra``).

    The machine is shared with training runs: the load average says how far timings are upper bounds.
    """
    import numba

    with open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "?")
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        **extra,
    }


def machine_line(m: dict) -> str:
    """One sentence for a results page: ``Machine: <cpu>, <n> CPUs (...), load average at start ...``."""
    load = m["load_average_at_start"]
    return (
        f"Machine: {m['cpu']}, {m['cpus']} CPUs ({m['numba_threads']} numba threads), load average at start "
        f"{load[0]:.2f} (1 min), {load[1]:.2f} (5 min); Python {m['python']}, NumPy {m['numpy']}, numba {m['numba']}."
    )


def write_results(name: str, report: dict, markdown: str, folder: Path = RESULTS) -> None:
    """Write ``<folder>/<name>.json`` (the report, indented) and ``<folder>/<name>.md``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (folder / f"{name}.md").write_text(markdown)
