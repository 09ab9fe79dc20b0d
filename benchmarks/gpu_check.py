"""A quick ``reproduce`` on CUDA and on the CPU: compare the files, the errors and the times.

For a machine with a GPU. Runs ``weightcodec reproduce <model> --method <method> --quick`` as a
subprocess three times, each with its own results folder and checkpoint cache (so every run
trains its own baseline): once with ``--device cpu`` and twice with ``--device cuda`` (the
second CUDA run says whether the GPU run repeats itself byte for byte; atomic adds in CUDA
kernels may make it differ). Reports per run the file's sha256 and size, the test errors and
the seconds, then CUDA against CPU: the same bytes or not, the error difference and the speedup.
With ``--nproc N`` (N > 1) the CUDA runs go through ``torchrun --nproc_per_node N`` (nccl).

Writes ``benchmarks/results/gpu-check.json`` and ``gpu-check.md``. Exit codes: 0 all runs
finished, 1 a run failed, 2 no CUDA GPU on this machine (nothing is run; said on stderr)::

    python benchmarks/gpu_check.py [--model lenet300] [--method deep] [--data mnist.npz] [--nproc 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, machine_line, write_results

EXIT_OK, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 2
TIMEOUT_S = 1800
COMPARED = ("baseline_test_error", "test_error", "file_bytes", "ratio")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(args: argparse.Namespace, device: str, folder: Path) -> dict:
    """One ``reproduce --quick`` on ``device`` in ``folder``; its figures, sha256 and wall seconds."""
    command = ["-m", "weightcodec", "-q", "reproduce", args.model, "--method", args.method, "--quick", "--device", device]
    if args.data is not None:
        command += ["--data", str(Path(args.data).resolve())]
    launcher = [sys.executable]
    if device == "cuda" and args.nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc), "--master_addr", "127.0.0.1",
                     "--master_port", str(_free_port())]  # fmt: skip
    env = {"WEIGHTCODEC_CACHE": str(folder / "cache")}
    start = time.perf_counter()
    done = subprocess.run(launcher + command, cwd=folder, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=TIMEOUT_S)  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"device": device, "failed": True, "stderr": done.stderr[-2000:], "wall_seconds": seconds}
    results = folder / "benchmarks" / "results"
    [json_path] = results.glob("reproduce-*-quick.json")
    result = json.loads(json_path.read_text())
    wcz = Path(json_path.with_suffix(".wcz"))
    return {
        "device": device,
        "failed": False,
        "world_size": result["world_size"],
        "sha256": hashlib.sha256(wcz.read_bytes()).hexdigest(),
        "wall_seconds": seconds,
        "pipeline_seconds": result["seconds"],
        "stage_seconds": result.get("stage_seconds"),
        **{key: result[key] for key in COMPARED},
    }


def compare(cpu: dict, cuda: dict, cuda_again: dict) -> dict:
    """CUDA against CPU, and the second CUDA run against the first."""
    return {
        "cuda_same_bytes_as_cpu": cuda["sha256"] == cpu["sha256"],
        "cuda_repeats_its_bytes": cuda["sha256"] == cuda_again["sha256"],
        "test_error_cuda_minus_cpu": cuda["test_error"] - cpu["test_error"],
        "file_bytes_cuda_minus_cpu": cuda["file_bytes"] - cpu["file_bytes"],
        "speedup_pipeline": cpu["pipeline_seconds"] / cuda["pipeline_seconds"],
    }


def markdown(report: dict) -> str:
    runs = report["runs"]
    lines = [
        f"# GPU check: `reproduce {report['model']} --method {report['method']} --quick` on CUDA and CPU",
        "",
        f"GPU: {report['gpu']}; CUDA runs with {report['nproc']} process(es). `benchmarks/gpu_check.py`.",
        "",
        "| run | device | world | test error % | baseline error % | file bytes | ratio | pipeline s | sha256 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['device']} | {r['world_size']} | {r['test_error']:.2f} | {r['baseline_test_error']:.2f} | "
            f"{r['file_bytes']} | {r['ratio']:.1f} | {r['pipeline_seconds']:.1f} | `{r['sha256'][:16]}` |"
        )
    c = report["comparison"]
    lines += [
        "",
        f"CUDA gives {'the same' if c['cuda_same_bytes_as_cpu'] else 'different'} bytes as the CPU; a second CUDA run "
        f"gives {'the same' if c['cuda_repeats_its_bytes'] else 'different'} bytes. Test error CUDA - CPU: "
        f"{c['test_error_cuda_minus_cpu']:+.2f} points; file size CUDA - CPU: {c['file_bytes_cuda_minus_cpu']:+d} bytes; "
        f"pipeline speedup on CUDA: {c['speedup_pipeline']:.2f}x.",
        "",
        machine_line(report["machine"]),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--method", default="deep")
    parser.add_argument("--data", help="an MNIST .npz or IDX folder (default: the packaged copy)")
    parser.add_argument("--nproc", type=int, default=1, help="CUDA processes (torchrun, nccl) for the CUDA runs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU here (PyTorch {torch.__version__}, CUDA build {torch.version.cuda}); "
              "nothing was run. Run this on a machine with a GPU and a CUDA build of torch.", file=sys.stderr)  # fmt: skip
        return EXIT_NO_GPU
    if args.nproc > torch.cuda.device_count():
        print(f"gpu_check: --nproc {args.nproc} but only {torch.cuda.device_count()} GPU(s)", file=sys.stderr)
        return EXIT_FAILED
    runs = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for name, device in (("cpu", "cpu"), ("cuda", "cuda"), ("cuda_again", "cuda")):
            folder = Path(scratch) / name
            folder.mkdir()
            runs[name] = run_once(args, device, folder)
            status = "FAILED" if runs[name]["failed"] else f"{runs[name]['pipeline_seconds']:.1f} s"
            print(f"{name}: {status}", flush=True)
    failed = [name for name, r in runs.items() if r["failed"]]
    if failed:
        for name in failed:
            print(f"gpu_check: the {name} run failed:\n{runs[name]['stderr']}", file=sys.stderr)
        return EXIT_FAILED
    report = {
        "model": args.model,
        "method": args.method,
        "nproc": args.nproc,
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "runs": runs,
        "comparison": compare(runs["cpu"], runs["cuda"], runs["cuda_again"]),
        "machine": machine(),
    }
    write_results("gpu-check", report, markdown(report))
    print(markdown(report))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
