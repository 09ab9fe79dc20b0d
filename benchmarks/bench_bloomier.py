"""Scale benchmark of the weightless codec's Bloomier filter on the layers Weightless encodes.

Layers (positions, density, clusters K, cell width t):

* LeNet-300-100 FC-0, 784 x 300, 8 % non-zero, K = 32, t = 8
* LeNet-5 FC-0 (Caffe), 800 x 500, 8 % non-zero, K = 32, t = 8
* VGG-16 FC-6, 25088 x 4096 = 102,760,448 positions, 4 % non-zero, K = 32, t = 8

The layers are synthetic (uniformly random non-zero positions, codes uniform over K random
centroids): the filter's size, speed and false-positive rate depend only on the counts, not on
which positions are non-zero. For each layer it measures, in one process:

* ``encode_s``: :func:`weightcodec.codecs.weightless.encode` (codebook, hashing, peeling,
  assignment, packing);
* ``decode_first_s``: the first full-layer decode of the layer (for the first layer it also
  loads numba's cached machine code);
* ``decode_s`` and ``decode_min_s``: the median and the fastest of ``--repeat`` further
  full-layer decodes (on a shared machine the fastest is the closest to the uncontended cost);
* ``dense_write_s``: the median time NumPy takes to allocate and zero the float32 layer
  (``np.empty(size); out[:] = 0``), the memory-bandwidth floor of any decoder that returns it;
* ``*_peak_rss_bytes``: the process's peak resident set during encode / decode, read from
  ``VmHWM`` in ``/proc/self/status`` after resetting it (``/proc/self/clear_refs`` = 5), and
  ``*_peak_extra_bytes``, that peak minus the resident set just before the step (so the input
  layer counts in the first and not in the second);
* sizes: section bytes, whole ``.wcz`` file bytes (one tensor), bits per non-zero, the
  ``n * t`` lower bound, expected and measured false positives.

The paper's decode times (Reagen et al. 2018, Intel i7-6700K) are printed beside.
Writes ``benchmarks/results/bloomier.json`` and ``bloomier.md``. Run it on a quiet machine::

    nice -n 10 python benchmarks/bench_bloomier.py
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from pathlib import Path

import numpy as np
from _common import RESULTS, dense_write, machine, machine_line, synthetic_layer, timed, write_results

from weightcodec import container
from weightcodec.codecs import weightless

LAYERS = [
    # name, shape, density, clusters, t, paper decode seconds on an i7-6700K
    ("LeNet-300-100 FC-0", (784, 300), 0.08, 32, 8, 0.52),
    ("LeNet-5 FC-0", (800, 500), 0.08, 32, 8, 1.3),
    ("VGG-16 FC-6", (25088, 4096), 0.04, 32, 8, 22.8),
]
GOALS = {"decode_s": 2.0, "encode_s": 30.0, "peak_rss_bytes": 4 * 2**30}  # VGG-16 FC-6: the project's acceptance criteria


def rss_bytes(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process, in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measured(step):
    """Run ``step()``; return its result, seconds, peak RSS and peak RSS above the start."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = rss_bytes("VmRSS")
    result, seconds = timed(step)
    peak = rss_bytes("VmHWM")
    return result, seconds, peak, peak - before


def bench_layer(name, shape, density, clusters, t, paper_s, repeat: int) -> dict:
    layer = synthetic_layer(shape, density, clusters, seed=0)
    size = layer.size
    # named: the weightless codec's default filter is the ribbon, which measured smaller
    encode = partial(weightless.encode, layer, t=t, seed=0, filter="bloomier")
    encoded, encode_s, encode_peak, encode_extra = measured(encode)
    meta, sections = encoded.meta, encoded.sections
    out, decode_first_s, decode_peak, decode_extra = measured(lambda: weightless.decode(meta, sections, shape))
    nonzero = layer != 0
    exact = bool(np.array_equal(out[nonzero], layer[nonzero]))
    false_positives = weightless.measured_false_positives(layer, out)
    del out
    decode_times, floor_times = [], []
    for _ in range(repeat):
        decode_times.append(measured(lambda: weightless.decode(meta, sections, shape))[1])
        floor_times.append(measured(lambda: dense_write(size))[1])
    n = meta["n"]
    file_bytes = len(container.to_bytes([container.TensorRecord("w", "float32", shape, encoded)]))
    bound = n * t / 8 + len(sections["codebook"])
    return {
        "layer": name,
        "shape": list(shape),
        "positions": size,
        "n": n,
        "density": n / size,
        "clusters": meta["K"],
        "t": t,
        "m": meta["m"],
        "seed": meta["seed"],
        "encode_s": encode_s,
        "decode_first_s": decode_first_s,
        "decode_s": statistics.median(decode_times),
        "decode_min_s": min(decode_times),
        "decode_runs_s": decode_times,
        "dense_write_s": statistics.median(floor_times),
        "paper_decode_s_i7_6700k": paper_s,
        "decode_positions_per_s": size / statistics.median(decode_times),
        "encode_peak_rss_bytes": encode_peak,
        "encode_peak_extra_bytes": encode_extra,
        "decode_peak_rss_bytes": decode_peak,
        "decode_peak_extra_bytes": decode_extra,
        "section_bytes": {k: len(v) for k, v in sections.items()},
        "bytes": encoded.nbytes,
        "file_bytes": file_bytes,
        "dense_bytes": size * 4,
        "bits_per_nonzero": 8 * encoded.nbytes / n,
        "table_bits_per_nonzero": 8 * len(sections["table"]) / n,
        "bound_bytes": bound,
        "overhead_percent": 100 * (encoded.nbytes - bound) / bound,
        "expected_false_positives": weightless.expected_false_positives(meta["K"], t, size - n),
        "measured_false_positives": false_positives,
        "stored_weights_exact": exact,
    }


def markdown(report: dict) -> str:
    rows = report["layers"]
    m = report["machine"]
    lines = [
        "# Bloomier filter (weightless codec) at scale",
        "",
        f"{machine_line(m)} "
        f"Synthetic layers (uniform random positions, codes uniform over K centroids), k = 3, ratio 1.23. "
        f"Written by `benchmarks/bench_bloomier.py`.",
        "",
        "## Time",
        "",
        "| layer | positions | non-zeros | encode s | decode s (first) | decode s (median) | decode s (min) | "
        "M positions/s | dense write s (floor) | paper decode s (i7-6700K) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['positions']:,} | {r['n']:,} | {r['encode_s']:.3f} | {r['decode_first_s']:.3f} | "
            f"{r['decode_s']:.3f} | {r['decode_min_s']:.3f} | {r['decode_positions_per_s'] / 1e6:.0f} | "
            f"{r['dense_write_s']:.3f} | {r['paper_decode_s_i7_6700k']} |"
        )
    lines += [
        "",
        "`decode s` are the median and the fastest of the warm runs (M positions/s from the median); `first` is "
        "the layer's first decode (for the first layer it also loads numba's cached code). `dense write` is "
        "`np.empty(size, float32); out[:] = 0`, the least any decoder returning the dense layer can take, "
        "measured in the same run.",
        "",
        "## Memory",
        "",
        "| layer | dense layer MiB | encode peak RSS MiB (above start) | decode peak RSS MiB (above start) |",
        "|---|---:|---:|---:|",
    ]
    mib = 2**20
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['dense_bytes'] / mib:.1f} | {r['encode_peak_rss_bytes'] / mib:.0f} "
            f"({r['encode_peak_extra_bytes'] / mib:.0f}) | {r['decode_peak_rss_bytes'] / mib:.0f} "
            f"({r['decode_peak_extra_bytes'] / mib:.0f}) |"
        )
    lines += [
        "",
        f"Peak RSS: {m['memory_measure']}. It is the whole process (Python, NumPy, numba, the input layer during "
        "encode, the output layer during decode).",
        "",
        "## Size and false positives",
        "",
        "| layer | K | t | m | bytes (sections) | .wcz bytes | bits / non-zero | table bits / non-zero | "
        "n·t bound bytes | overhead % | expected FP | measured FP | stored weights exact |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['clusters']} | {r['t']} | {r['m']:,} | {r['bytes']:,} | {r['file_bytes']:,} | "
            f"{r['bits_per_nonzero']:.3f} | {r['table_bits_per_nonzero']:.3f} | {r['bound_bytes']:,.0f} | "
            f"{r['overhead_percent']:.1f} | {r['expected_false_positives']:,.0f} | {r['measured_false_positives']:,} | "
            f"{r['stored_weights_exact']} |"
        )
    fc6 = rows[-1]
    peak = max(fc6["encode_peak_rss_bytes"], fc6["decode_peak_rss_bytes"])
    lines += [
        "",
        "## Acceptance criteria (VGG-16 FC-6)",
        "",
        f"- decode < {GOALS['decode_s']} s: {fc6['decode_s']:.3f} s ({_verdict(fc6['decode_s'], GOALS['decode_s'])})",
        f"- build < {GOALS['encode_s']} s: {fc6['encode_s']:.3f} s ({_verdict(fc6['encode_s'], GOALS['encode_s'])})",
        f"- peak memory < 4 GiB: encode {fc6['encode_peak_rss_bytes'] / 2**30:.2f} GiB, decode "
        f"{fc6['decode_peak_rss_bytes'] / 2**30:.2f} GiB ({_verdict(peak, GOALS['peak_rss_bytes'])})",
        "",
    ]
    return "\n".join(lines)


def _verdict(value: float, goal: float) -> str:
    return "met" if value < goal else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="warm decodes per layer (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for bloomier.json and bloomier.md")
    args = parser.parse_args()
    memory = "VmHWM from /proc/self/status, reset through /proc/self/clear_refs before each step"
    report = {"machine": machine(memory_measure=memory), "layers": []}
    for spec in LAYERS:
        row = bench_layer(*spec, repeat=args.repeat)
        print(f"{row['layer']}: encode {row['encode_s']:.3f} s, decode {row['decode_s']:.3f} s "
              f"(floor {row['dense_write_s']:.3f} s), {row['bits_per_nonzero']:.3f} bits/non-zero", flush=True)
        report["layers"].append(row)
    write_results("bloomier", report, markdown(report), args.out)


if __name__ == "__main__":
    main()
