"""A model larger than comfortable: encode and decode a 3 GiB state_dict in bounded memory, serial and parallel.

The model: 12 tensors of 4096 x 16384 float32 (256 MiB each, 3 GiB in all), 10 % non-zero, 16
distinct values, written as ``.safetensors`` under a temporary folder in /tmp (deleted after).
Each step runs the command line in a fresh process under ``/usr/bin/time -v`` (peak RSS = its
"Maximum resident set size", the whole process, imports included)::

    weightcodec encode m.safetensors -o m.wcz --codec deep --clusters 16 --jobs J
    weightcodec decode m.wcz -o back.safetensors --jobs J

for J = 1 and 2. Exactness: the decoded file is byte-identical to the input (the 16 values are
kept as they are, so the codec is lossless here), and ``--jobs 2`` writes the same ``.wcz`` as
``--jobs 1``. That the streaming files equal the in-memory path's is checked in the test suite
(tests/test_streaming.py) on a smaller model; running the in-memory path on 3 GiB is what this
avoids. The machine is shared: the load average is recorded at start and end.

Writes ``benchmarks/results/large-model.json`` and ``large-model.md``::

    python benchmarks/bench_large_model.py [--layers 12] [--rows 4096] [--cols 16384]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, machine_line, write_results

from weightcodec import state_files

GIB = 1 << 30
TARGET_PEAK_GIB = 1.5
ROOT = Path(__file__).resolve().parent.parent


def make_layer(rows: int, cols: int, seed: int) -> torch.Tensor:
    """~10 % non-zeros drawn from 16 values; built in float32 pieces to keep the generator's memory low."""
    rng = np.random.default_rng(seed)
    values = np.linspace(-0.2, 0.2, 16, dtype=np.float32)
    layer = np.zeros(rows * cols, np.float32)
    keep = rng.random(layer.size, dtype=np.float32) < 0.1
    layer[keep] = values[rng.integers(0, 16, int(keep.sum()))]
    return torch.from_numpy(layer.reshape(rows, cols))


def run_cli(args: list[str]) -> dict:
    """Run ``weightcodec ARGS`` under /usr/bin/time -v; wall seconds and peak RSS in bytes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = ["/usr/bin/time", "-v", sys.executable, "-c", "import sys; from weightcodec.cli import main; sys.exit(main())", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"weightcodec {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"seconds": seconds, "peak_rss_bytes": peak_kib * 1024, "peak_rss_gib": peak_kib * 1024 / GIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=16384)
    args = parser.parse_args()
    info = machine()
    folder = Path(tempfile.mkdtemp(prefix="weightcodec-large-", dir="/tmp"))
    try:
        source = folder / "m.safetensors"
        specs = {f"layer{i}.weight": torch.empty(args.rows, args.cols, device="meta") for i in range(args.layers)}
        with state_files.write_state_dict(source, specs) as writer:
            for i, name in enumerate(specs):
                writer.fill(name, lambda target, i=i: target.copy_(make_layer(args.rows, args.cols, i)))
        model_bytes = source.stat().st_size
        runs = {}
        for jobs in (1, 2):
            wcz, back = folder / f"j{jobs}.wcz", folder / f"back{jobs}.safetensors"
            encode = run_cli(["encode", str(source), "-o", str(wcz), "--codec", "deep", "--clusters", "16", "--jobs", str(jobs), "-q"])
            decode = run_cli(["decode", str(wcz), "-o", str(back), "--jobs", str(jobs), "-q"])
            exact = filecmp.cmp(source, back, shallow=False)
            runs[jobs] = {"encode": encode, "decode": decode, "decoded_equals_input": exact, "wcz_bytes": wcz.stat().st_size,
                          "load_average_after": os.getloadavg()}
            back.unlink()
        same_wcz = filecmp.cmp(folder / "j1.wcz", folder / "j2.wcz", shallow=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = {
        "machine": info,
        "model": {"layers": args.layers, "shape": [args.rows, args.cols], "density": 0.1, "values": 16,
                  "file_bytes": model_bytes, "file_gib": model_bytes / GIB},
        "target_peak_rss_gib": TARGET_PEAK_GIB,
        "runs": {str(j): r for j, r in runs.items()},
        "jobs2_wcz_equals_jobs1": same_wcz,
        "speedup_jobs2": {step: runs[1][step]["seconds"] / runs[2][step]["seconds"] for step in ("encode", "decode")},
        "load_average_at_end": os.getloadavg(),
    }
    write_results("large-model", report, markdown(report))


def markdown(r: dict) -> str:
    m, runs = r["model"], r["runs"]
    lines = [
        "# A 3 GiB model in bounded memory: encode and decode tensor by tensor, serial and parallel",
        "",
        machine_line(r["machine"]) + f" Load average at the end {r['load_average_at_end'][0]:.2f} (1 min): the machine "
        "is shared with other jobs, so times are upper bounds and the speedup is what was left of 2 cores.",
        "",
        f"Model: {m['layers']} float32 tensors of {m['shape'][0]} x {m['shape'][1]}, 10 % non-zero, 16 values; "
        f"{m['file_gib']:.2f} GiB as .safetensors. `weightcodec encode --codec deep --clusters 16` and `weightcodec decode "
        "-o back.safetensors`, each in a fresh process; peak RSS is `/usr/bin/time -v`'s maximum resident set size "
        f"(the whole process, imports included). Target: at most {r['target_peak_rss_gib']} GiB each. "
        "Written by `benchmarks/bench_large_model.py`.",
        "",
        "| --jobs | step | seconds | peak RSS (GiB) | within target | exact |",
        "|---:|---|---:|---:|---|---|",
    ]
    for jobs, run in runs.items():
        for step in ("encode", "decode"):
            s = run[step]
            exact = run["decoded_equals_input"] if step == "decode" else (True if jobs == "1" else r["jobs2_wcz_equals_jobs1"])
            lines.append(f"| {jobs} | {step} | {s['seconds']:.1f} | {s['peak_rss_gib']:.2f} | "
                         f"{s['peak_rss_gib'] <= r['target_peak_rss_gib']} | {exact} |")
    sp = r["speedup_jobs2"]
    lines += [
        "",
        f"Speedup of `--jobs 2` over `--jobs 1`: encode {sp['encode']:.2f}x, decode {sp['decode']:.2f}x. "
        "`exact` for decode: the decoded file is byte-identical to the input; for encode: the `.wcz` of `--jobs 2` "
        f"equals that of `--jobs 1`. .wcz size: {runs['1']['wcz_bytes']:,} bytes.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
