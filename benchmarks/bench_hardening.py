"""Reader limits, measured: decoding memory per tensor, and time in the number of tensors.

1. **Memory.** Hostile-looking but valid files of a few hundred bytes (deep layers whose gap
   and code streams hold one symbol, 2**26 entries) and real
   payloads (a dense deep layer with random 0/1 codes under Huffman and ANS, a weightless
   ribbon layer, a raw tensor) are parsed in a fresh interpreter; the peak resident memory of
   decoding them (``tensors.decode_file``), above the resident memory just before, is
   reported against the decoded output's bytes. The bound promised is 2x.
2. **Tensors.** A file of 40,000 empty tensors is written (``container.to_bytes``) and loaded
   (``weightcodec.load_bytes``); the baseline, in the same run, is ``torch.save`` and
   ``torch.load`` of the same state_dict in memory, and the same file of 4,000 tensors shows
   whether the cost is linear (ratio about 10).

Writes ``benchmarks/results/hardening.json`` and ``hardening.md``::

    python benchmarks/bench_hardening.py
"""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, machine_line, timed, write_results

import weightcodec
from weightcodec import container, tensors
from weightcodec.codecs import Encoded, ans, weightless

SRC = str(Path(weightcodec.__file__).resolve().parents[1])
DENSE = 2**25  # elements of the layers with a real payload (128 MiB decoded)
ISSUE = 2**26  # elements of the one-symbol file (256 MiB decoded)
TENSORS = (4_000, 40_000)
REPEATS = 3  # timings: the median of this many runs

# In a fresh interpreter: decode a tiny file of each codec first (imports, compiled kernels), then
# for each file: parse it, reset the peak (VmHWM) through /proc/self/clear_refs, decode, read the peak.
MEASURE = r"""
import json, resource, sys
from weightcodec import container, tensors

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()

def peak():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))

results = {}
for name, (path, small) in json.loads(sys.argv[1]).items():
    tensors.decode_file(container.read(small))
    wcz = container.read(path)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = rss()
    state = tensors.decode_file(wcz)
    extra = peak() - base
    results[name] = {"extra_bytes": extra, "output_bytes": sum(t.numel() * t.element_size() for t in state.values())}
    del state, wcz
print(json.dumps(results))
"""


def deep_record(size: int, entropy: str, codebook: bytes = np.float32([1.0]).tobytes(), codes: bytes | None = None):
    one = b"\x00\x00" if entropy == "huffman" else b"\x05\x00"  # one-symbol stream of symbol 0
    meta = {"index_bits": 1, "entropy": entropy, "entries": size}
    sections = {"codebook": codebook, "gaps": one, "codes": one if codes is None else codes}
    return container.TensorRecord("w", "float32", (size,), Encoded("deep", meta, sections))


def memory_files() -> dict[str, container.TensorRecord]:
    """The measured tensors: payloads of a few bytes, and real ones."""
    codes = np.unpackbits(np.random.default_rng(0).integers(0, 256, DENSE // 8, dtype=np.uint8))
    two = np.float32([-0.5, 2.0]).tobytes()
    return {
        "deep, huffman, one-symbol streams, 2**26 entries": deep_record(ISSUE, "huffman"),
        "deep, ans, one-symbol streams": deep_record(ISSUE, "ans"),
        # two equiprobable codes: a one-bit Huffman code whose payload is the random bits
        "deep, huffman, random codes": deep_record(DENSE, "huffman", two, b"\x01\x02\x00\x01" + np.packbits(codes).tobytes()),
        "deep, ans, random codes": deep_record(
            DENSE, "ans", two, ans._count_layout(np.array([0, 1]), codes, np.array([1, 1]))
        ),
        "weightless, ribbon, t=8": container.TensorRecord(
            "w", "float32", (DENSE,), weightless.encode(np.eye(1, DENSE, dtype=np.float32)[0], t=8, filter="ribbon")
        ),
        "raw": tensors.encode_tensor("w", torch.ones(DENSE)),
    }


def small_file(record: container.TensorRecord) -> container.TensorRecord:
    array = np.zeros(64, dtype=np.float32)
    array[[3, 9]] = [0.5, 1.5]
    codec, meta = record.encoded.codec, record.encoded.meta
    if codec == "raw":
        return tensors.encode_tensor("w", torch.ones(8))
    from weightcodec.codecs import deep

    encoded = deep.encode(array, entropy=meta["entropy"]) if codec == "deep" else weightless.encode(array, t=8, filter=meta["filter"])
    return container.TensorRecord("w", "float32", (64,), encoded)


def measure_memory(folder: Path) -> dict:
    runs = {}
    for index, (name, record) in enumerate(memory_files().items()):
        path, small = folder / f"m{index}.wcz", folder / f"m{index}-small.wcz"
        container.write(path, [record])
        container.write(small, [small_file(record)])
        runs[name] = (str(path), str(small), path.stat().st_size)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    arg = json.dumps({name: run[:2] for name, run in runs.items()})
    done = subprocess.run([sys.executable, "-c", MEASURE, arg], capture_output=True, text=True, env=env, check=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, result in results.items():
        result["file_bytes"] = runs[name][2]
        result["ratio"] = result["extra_bytes"] / result["output_bytes"]
    return results


def median_seconds(step) -> float:
    return float(np.median([timed(step)[1] for _ in range(REPEATS)]))


def median_cpu_seconds(step) -> float:
    """Median CPU seconds of ``step()``: on a shared machine, wall clock is only an upper bound."""
    times = []
    for _ in range(REPEATS):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    return float(np.median(times))


def empty_records(n: int) -> list[container.TensorRecord]:
    return [
        container.TensorRecord(f"t{i}", "float32", (0,), Encoded("raw", {"dtype": "<f4"}, {"data": b""}))
        for i in range(n)
    ]


def gc_off(step) -> float:
    """Median CPU seconds of ``step()`` with Python's cyclic garbage collector paused."""
    gc.disable()
    try:
        return median_cpu_seconds(step)
    finally:
        gc.enable()


def measure_tensors() -> dict:
    results = {}
    for n in TENSORS:
        records = empty_records(n)
        data = container.to_bytes(records)
        state = {r.name: torch.zeros(0) for r in records}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        pickled = buffer.getvalue()
        load = median_seconds(lambda: weightcodec.load_bytes(data))
        results[n] = {
            "file_bytes": len(data),
            "write_seconds": median_seconds(lambda: container.to_bytes(records)),
            "write_cpu_seconds": median_cpu_seconds(lambda: container.to_bytes(records)),
            "load_seconds": load,
            "load_cpu_seconds": median_cpu_seconds(lambda: weightcodec.load_bytes(data)),
            "torch_save_seconds": median_seconds(lambda: torch.save(state, io.BytesIO())),
            "torch_load_seconds": median_seconds(lambda: torch.load(io.BytesIO(pickled), weights_only=True)),
        }
        results[n]["load_over_torch_load"] = load / results[n]["torch_load_seconds"]
    small, large = (results[n] for n in TENSORS)
    # CPU seconds: on a shared machine the wall clock of a short step is mostly waiting
    results["load_cpu_ratio_40k_over_4k"] = large["load_cpu_seconds"] / small["load_cpu_seconds"]
    results["write_cpu_ratio_40k_over_4k"] = large["write_cpu_seconds"] / small["write_cpu_seconds"]
    records = empty_records(TENSORS[-1])
    results["write_cpu_seconds_40k_gc_off"] = gc_off(lambda: container.to_bytes(records))
    return results


def markdown(report: dict) -> str:
    lines = [
        "# Reader limits: decoding memory and time in the number of tensors",
        "",
        "Written by `benchmarks/bench_hardening.py`. " + machine_line(report["machine"]),
        "",
        "## Peak memory of decoding one tensor, above the process's resident memory before",
        "",
        "Each file is parsed first (its bytes are the file's cost), then decoded in a fresh interpreter; "
        "the peak resident memory (VmHWM, reset before the decode) minus the resident memory before it. "
        "The bound is 2x the output. Before the chunked decoders, such a file of a few hundred bytes peaked at "
        "about 2.7 GB for its 256 MiB output (about 10x).",
        "",
        "| tensor | file bytes | output | peak above baseline | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in report["memory"].items():
        lines.append(
            f"| {name} | {r['file_bytes']:,} | {r['output_bytes'] / 2**20:.0f} MiB | "
            f"{r['extra_bytes'] / 2**20:.0f} MiB | {r['ratio']:.2f}x |"
        )
    t = report["tensors"]
    lines += [
        "",
        "## Many tensors: empty tensors, write and load",
        "",
        f"Median of {REPEATS} runs each, wall clock. Baseline: `torch.save` / `torch.load(weights_only=True)` "
        "of the same state_dict in memory, same run. Before the dict index, 40,000 tensors took 24 s to decode.",
        "",
        "| tensors | file bytes | write s | write CPU s | load s | load CPU s | torch.save s | torch.load s | load / torch.load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in TENSORS:
        r = t[n]
        lines.append(
            f"| {n:,} | {r['file_bytes']:,} | {r['write_seconds']:.2f} | {r['write_cpu_seconds']:.2f} | "
            f"{r['load_seconds']:.2f} | {r['load_cpu_seconds']:.2f} | "
            f"{r['torch_save_seconds']:.2f} | {r['torch_load_seconds']:.2f} | {r['load_over_torch_load']:.2f} |"
        )
    lines += [
        "",
        f"40,000 over 4,000 tensors, CPU seconds: load {t['load_cpu_ratio_40k_over_4k']:.1f}x, write "
        f"{t['write_cpu_ratio_40k_over_4k']:.1f}x (10x is linear; the list scans made it quadratic; "
        "tests/test_limits.py counts the name comparisons: at most one per tensor). Part of what writing adds beyond "
        "10x is Python's cyclic garbage collector passing over the many small objects: with it paused, 40,000 "
        f"tensors write in {t['write_cpu_seconds_40k_gc_off']:.2f} CPU s. The wall clock is an upper bound: the "
        "machine is shared (load average above).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        memory = measure_memory(Path(folder))
    report = {"machine": machine(), "memory": memory, "tensors": measure_tensors()}
    write_results("hardening", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
