"""Weights per second and memory per weight of every stage, on one large layer: the inputs of docs/scaling.md.

One 4096 x 4096 float32 layer (16.8 M weights, the size of a 7B transformer's attention
projection), drawn dense from N(0, 0.02), goes through the stages a model goes through:

* ``prune``: :func:`weightcodec.simplify.prune.magnitude_mask` to 90 % sparsity (torch, CPU);
* ``kmeans``: :func:`weightcodec.simplify.cluster.kmeans_1d` of the 1.68 M kept weights into 16
  clusters, linear initialisation (NumPy, CPU; what a GPU run does too);
* ``deep_encode`` / ``deep_decode``: the deep codec with ``index_bits="auto"`` (tries 1..12,
  the pipelines' default) and Huffman; ``deep_encode_b8`` with a fixed 8-bit gap field;
* ``weightless_encode`` / ``weightless_decode``: the weightless codec, ribbon filter, ``t = 8``
  (false positives 16 / 256 of the zeros).

Each stage runs in its own subprocess, which reports its wall-clock seconds and its peak RSS
above the RSS it had with its input loaded (the peak is reset first through
``/proc/self/clear_refs``; Linux), so the working set the stage adds.
Baselines measured in the same run: ``np.sort`` of the kept weights (k-means is a sort plus
O(k log n) per iteration) and writing a dense float32 layer (the floor of any decoder).
The machine is shared with other jobs (2 cores): timings are upper bounds.

From the rates, the time of each stage for every weight of a 7B-parameter model (Llama-2-7B's
shapes) and the memory of its largest tensor (:func:`projection_7b`), quoted by docs/scaling.md.

Writes ``benchmarks/results/throughput.json`` and ``throughput.md``::

    python benchmarks/bench_throughput.py
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys

import numpy as np
from _common import dense_write, machine, machine_line, timed, write_results

ROWS, COLS = 4096, 4096
SPARSITY = 0.9
CLUSTERS = 16
T_BITS = 8
SEED = 0
FLOAT32_BYTES = 4
DEEP_FIXED_BITS = 8
WEIGHTLESS_PARAMS = {"t": T_BITS, "filter": "ribbon", "seed": SEED}
STAGES = ("baseline_dense_write", "baseline_sort", "prune", "kmeans", "deep_encode", "deep_encode_b8", "deep_decode",
          "weightless_encode", "weightless_decode")  # fmt: skip
ONE_THREAD = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}  # per-core rates: torch and numba on one thread
# stages whose work is over the kept weights only; the others touch every weight
PER_NONZERO = {"baseline_sort", "kmeans"}


def dense_layer() -> np.ndarray:
    return np.random.default_rng(SEED).normal(0.0, 0.02, (ROWS, COLS)).astype(np.float32)


def pruned_layer():
    """The dense layer magnitude-pruned to ``SPARSITY`` (a torch tensor): k-means' input."""
    import torch

    from weightcodec.simplify import prune

    weight = torch.from_numpy(dense_layer())
    return weight * prune.magnitude_mask(weight, sparsity=SPARSITY)


def simplified_layer() -> np.ndarray:
    """The layer pruned and clustered as the pipelines do: the codecs' input."""
    from weightcodec.simplify import cluster

    return cluster.quantize(pruned_layer(), CLUSTERS).numpy()


def _status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(f"{field}:"))


def _reset_peak_rss() -> int:
    """Return freed memory to the system, reset the peak RSS to the RSS now (Linux); return it.

    Without ``malloc_trim`` a stage could reuse memory its input preparation freed but kept,
    and seem to need none.
    """
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_bytes("VmRSS")


def run_stage(stage: str) -> dict:
    """Prepare the stage's input, then time the stage alone; peak RSS it adds above its input."""
    import torch

    from weightcodec.codecs import deep, weightless
    from weightcodec.simplify import cluster, prune

    if stage in ("prune", "baseline_dense_write"):
        weight = torch.from_numpy(dense_layer())
    elif stage in ("kmeans", "baseline_sort"):
        pruned = pruned_layer().numpy()
        kept = pruned[pruned != 0]
    else:
        layer = simplified_layer()
    codecs = {"deep_decode": (deep, {}), "weightless_decode": (weightless, WEIGHTLESS_PARAMS)}
    if stage in codecs:
        codec, params = codecs[stage]
        encoded = codec.encode(layer, **params)
        warm = codec.encode(layer[:64, :64], **params)  # compile the numba kernels on a small layer, outside the timing
        codec.decode(warm.meta, warm.sections, (64, 64))
    steps = {
        "baseline_dense_write": lambda: dense_write(ROWS * COLS),
        "baseline_sort": lambda: np.sort(kept.astype(np.float64)),
        "prune": lambda: prune.magnitude_mask(weight, sparsity=SPARSITY),
        "kmeans": lambda: cluster.kmeans_1d(kept, CLUSTERS),
        "deep_encode": lambda: deep.encode(layer),
        "deep_encode_b8": lambda: deep.encode(layer, index_bits=DEEP_FIXED_BITS),
        "deep_decode": lambda: deep.decode(encoded.meta, encoded.sections, (ROWS, COLS)),
        "weightless_encode": lambda: weightless.encode(layer, **WEIGHTLESS_PARAMS),
        "weightless_decode": lambda: weightless.decode(encoded.meta, encoded.sections, (ROWS, COLS)),
    }
    before = _reset_peak_rss()
    result, seconds = timed(steps[stage])
    out = {"stage": stage, "seconds": seconds, "rss_above_input_bytes": max(_status_bytes("VmHWM") - before, 0)}
    if "_encode" in stage:
        out["encoded_bytes"] = sum(len(s) for s in result.sections.values())
    if stage.endswith("_decode"):
        out["exact_nonzeros"] = bool(np.array_equal(result[layer != 0], layer[layer != 0]))
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--stage":
        print(json.dumps(run_stage(sys.argv[2])))
        return
    weights, nonzeros = ROWS * COLS, round((1 - SPARSITY) * ROWS * COLS)
    stages = {}
    for stage in STAGES:
        done = subprocess.run([sys.executable, __file__, "--stage", stage], capture_output=True, text=True, check=True,
                              env={**os.environ, **ONE_THREAD})  # fmt: skip
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        over = nonzeros if stage in PER_NONZERO else weights
        figures["items"] = "kept weights" if stage in PER_NONZERO else "weights"
        figures["weights_per_second"] = over / figures["seconds"]
        figures["peak_bytes_per_weight"] = figures["rss_above_input_bytes"] / over
        stages[stage] = figures
        print(f"{stage}: {figures['seconds']:.2f} s, {figures['weights_per_second'] / 1e6:.1f} M {figures['items']}/s, "
              f"+{figures['rss_above_input_bytes'] / 2**20:.0f} MiB", flush=True)  # fmt: skip
    report = {
        "layer": {"shape": [ROWS, COLS], "weights": weights, "nonzeros": nonzeros, "sparsity": SPARSITY,
                  "clusters": CLUSTERS, "t": T_BITS, "init": "N(0, 0.02)"},  # fmt: skip
        "stages": stages,
        "ratios": {
            "kmeans_over_sort": stages["kmeans"]["seconds"] / stages["baseline_sort"]["seconds"],
            **{f"{codec}_decode_over_dense_write": stages[f"{codec}_decode"]["seconds"] / stages["baseline_dense_write"]["seconds"]
               for codec in ("deep", "weightless")},  # fmt: skip
        },
        "machine": machine(),
    }
    report["projection_7b"] = projection_7b(stages, SPARSITY)
    write_results("throughput", report, markdown(report))


# A 7B-parameter decoder (Llama-2-7B's shapes): (rows, cols, count) of its 2-D weights
MODEL_7B = {
    "name": "Llama-2-7B shapes (32 layers, d=4096, MLP 11008, vocabulary 32000)",
    "tensors": [(32000, 4096, 2), (4096, 4096, 4 * 32), (11008, 4096, 2 * 32), (4096, 11008, 32)],
    "other_weights": 4096 * (2 * 32 + 1),  # the RMS norms, stored raw
}
CORES_7B = 16  # one machine's cores working on different tensors at once


def projection_7b(stages: dict, sparsity: float) -> dict:
    """Seconds per stage for every weight of :data:`MODEL_7B`, and the peak memory of one tensor.

    Time: weights (kept weights for the per-kept stages) over the measured rate, on one core and
    on :data:`CORES_7B` cores working on different tensors (assumes linear scaling). Memory:
    the largest tensor's float32 input plus the working set per weight measured above.
    """
    weights = sum(r * c * n for r, c, n in MODEL_7B["tensors"])
    largest = max(r * c for r, c, _ in MODEL_7B["tensors"])
    out = {"model": MODEL_7B["name"], "weights": weights, "largest_tensor": largest, "cores": CORES_7B, "stages": {}}
    for stage, f in stages.items():
        if stage.startswith("baseline"):
            continue
        share = (1 - sparsity) if stage in PER_NONZERO else 1.0
        seconds = weights * share / f["weights_per_second"]
        out["stages"][stage] = {
            "seconds_one_core": seconds,
            f"seconds_{CORES_7B}_cores": seconds / CORES_7B,
            "largest_tensor_peak_bytes": largest * (FLOAT32_BYTES + share * f["peak_bytes_per_weight"]),
        }
    return out


def markdown(report: dict) -> str:
    layer = report["layer"]
    lines = [
        "# Throughput of each stage on one large layer",
        "",
        f"One {layer['shape'][0]} x {layer['shape'][1]} float32 layer ({layer['weights'] / 1e6:.1f} M weights, "
        f"N(0, 0.02)), pruned to {layer['sparsity']:.0%} sparsity ({layer['nonzeros'] / 1e6:.2f} M kept), "
        f"{layer['clusters']} clusters; weightless: ribbon, t = {layer['t']}. Each stage in its own process, "
        "on one thread (OMP_NUM_THREADS = NUMBA_NUM_THREADS = 1; the machine line below describes the parent); memory "
        "is the peak RSS the stage adds above its input. The machine is shared (see its load): timings are upper "
        "bounds. `benchmarks/bench_throughput.py`.",
        "",
        "| stage | seconds | M items / s | items | added peak MiB | bytes / item | output bytes |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for stage, f in report["stages"].items():
        lines.append(
            f"| {stage} | {f['seconds']:.2f} | {f['weights_per_second'] / 1e6:.1f} | {f['items']} | "
            f"{f['rss_above_input_bytes'] / 2**20:.0f} | {f['peak_bytes_per_weight']:.2f} | {f.get('encoded_bytes', '')} |"
        )
    r = report["ratios"]
    lines += [
        "",
        f"Against the baselines of the same run: k-means takes {r['kmeans_over_sort']:.1f}x one sort of the kept "
        f"weights; deep decode {r['deep_decode_over_dense_write']:.0f}x and weightless decode "
        f"{r['weightless_decode_over_dense_write']:.0f}x the time of writing the dense layer.",
        "",
        machine_line(report["machine"]),
        "",
    ]
    p = report["projection_7b"]
    lines += [
        f"## Projected to a 7B model: {p['model']}",
        "",
        f"{p['weights'] / 1e9:.2f} G weights in 2-D tensors, the largest {p['largest_tensor'] / 1e6:.0f} M. Time = weights "
        f"(kept weights for k-means) / the rate above, on one core and on {p['cores']} cores each taking whole tensors; "
        "memory = the largest tensor as float32 plus the working set per weight above.",
        "",
        f"| stage | hours, 1 core | minutes, {p['cores']} cores | peak GiB for the largest tensor |",
        "|---|---:|---:|---:|",
    ]
    parallel = f"seconds_{p['cores']}_cores"
    for stage, f in p["stages"].items():
        lines.append(f"| {stage} | {f['seconds_one_core'] / 3600:.2f} | {f[parallel] / 60:.1f} | "
                     f"{f['largest_tensor_peak_bytes'] / 2**30:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
