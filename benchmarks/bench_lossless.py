"""Lossless coding of the same clustered tensors: our deep codec against NNCodec's codebook mode.

all-MiniLM-L6-v2's floating tensors of two or more dimensions (its 40 weight matrices and
embeddings, 22.68M of its 22.71M parameters) are each clustered to K values by our 1-D k-means
(``weightcodec.simplify.cluster.quantize``, what ``weightcodec encode --codec deep --clusters K
--sparsity 0`` does to them), for every K in :data:`CLUSTERS`. Both coders then store exactly
these clustered tensors:

* **ours**: one ``.wcz`` file holding them, each with its smallest exact codec
  (:func:`weightcodec.encode_exact`: the deep codec, Huffman or ANS, for every one of them);
  counted as the whole file's bytes, header included, and decoded back bit for bit (checked);
* **NNCodec 2.1.3**, in its codebook mode (``nncodec_encode.py --codebook``, in its own
  environment): each tensor on the uniform grid of QP :data:`NNCODEC_QP` (step 2^-15,
  3.1e-5, hundreds of times below the spacing of the clustered values), its distinct values as
  a codebook, the indices coded with DeepCABAC's context modelling. Its bitstream's bytes are
  counted; its reconstruction is checked to keep each tensor's K distinct values, and its
  largest error (about half a grid step) is reported.

Also shown: the order-0 entropy of each tensor's cluster indices, the bound of any coder that
codes them one by one with a fixed model (ours, with a stored model; DeepCABAC adapts and uses
neighbours, so it could go below it).

Writes ``benchmarks/results/lossless-minilm.{json,md}``. Needs ``pip install -e '.[bench]'`` and
NNCodec's environment (see ``bench_real_model.py``)::

    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
    python benchmarks/bench_lossless.py          # about 25 minutes on one busy core, mostly NNCodec

Clustered tensors and NNCodec's outputs are kept under ``<cache>/bench-lossless``
(``--reuse`` reads them back instead of recomputing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import _common
import numpy as np
import torch
from bench_real_model import NNCODEC_PYTHON, THREAD_VARIABLES, _seconds, _yes

from weightcodec import container, encode_exact, load
from weightcodec.api import compressible_names
from weightcodec.codecs.huffman import counts_entropy_bits
from weightcodec.pipelines.data import cache_dir
from weightcodec.pipelines.pretrained import minilm_dir
from weightcodec.simplify.cluster import quantize
from weightcodec.state_files import load_state_dict, save_state_dict
from weightcodec.tensors import encode_deep_smallest

HERE = Path(__file__).resolve().parent
# 32: the first trial's setting. K = 256 (the most the deep codec takes) was tried too: NNCodec's
# codebook mode had not finished one encode after 35 CPU minutes (K = 32: 6), and was stopped.
CLUSTERS = (16, 32)
NNCODEC_QP = -60  # grid step 2**(-60 / 4) = 2**-15 with NNCodec's qp_density 2


def clustered_state(state: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Every compressible tensor of ``state`` clustered to ``k`` values by our k-means."""
    return {name: quantize(state[name], k) for name in compressible_names(state)}


def index_entropy_bytes(tensor: torch.Tensor) -> float:
    """Order-0 entropy of the tensor's cluster indices, in bytes."""
    _, counts = np.unique(tensor.numpy(), return_counts=True)
    return counts_entropy_bits(counts) / 8


def ours(clustered: dict[str, torch.Tensor], path: Path) -> dict:
    """Our whole file of the clustered tensors; its bytes, codecs, seconds and exactness."""
    start, cpu = time.perf_counter(), time.process_time()
    report = encode_exact(clustered, path)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    decoded = load(path)
    codecs = [t["codec"] for t in report["tensors"].values()]
    return {"bytes": path.stat().st_size, "encode_seconds": seconds, "encode_cpu_seconds": cpu_seconds,
            "exact": all(torch.equal(decoded[name], tensor) for name, tensor in clustered.items()),
            "codecs": {codec: codecs.count(codec) for codec in sorted(set(codecs))},
            "tensor_bytes": {name: t["bytes"] for name, t in report["tensors"].items()}}  # fmt: skip


def without_classes(clustered: dict[str, torch.Tensor]) -> int:
    """Bytes of the same file with one model per stream (the deep codec's smaller of Huffman and ANS, no classes)."""
    records = [encode_deep_smallest(name, tensor) for name, tensor in clustered.items()]
    return len(container.to_bytes(records, {}))


def nncodec(model_path: Path, out: Path, reuse: bool) -> dict:
    """NNCodec's codebook-mode bitstream of the tensors in ``model_path`` (run in its own environment)."""
    figures = out / f"cb-qp{NNCODEC_QP}.json"
    if not (reuse and figures.is_file()):
        if not NNCODEC_PYTHON.exists():
            raise SystemExit(f"{NNCODEC_PYTHON} not found: create NNCodec's environment as bench_real_model.py says")
        command = [str(NNCODEC_PYTHON), str(HERE / "nncodec_encode.py"), str(model_path), str(out),
                   "--qp", str(NNCODEC_QP), "--codebook"]  # fmt: skip
        subprocess.run(command, check=True)
    return json.loads(figures.read_text())


def reconstruction_check(clustered: dict[str, torch.Tensor], reconstruction: dict[str, torch.Tensor]) -> dict:
    """Whether NNCodec kept every tensor's distinct values, and its largest error against the clustered values."""
    kept = all(
        torch.unique(reconstruction[name]).numel() == torch.unique(tensor).numel() for name, tensor in clustered.items()
    )
    error = max(float((reconstruction[name] - tensor).abs().max()) for name, tensor in clustered.items())
    return {"distinct_values_kept": kept, "max_abs_error": error}


def one_k(state: dict[str, torch.Tensor], k: int, work: Path, reuse: bool) -> dict:
    """Cluster at ``k``, code with both, compare."""
    folder = work / f"k{k}"
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / "clustered.safetensors"
    if not (reuse and model_path.is_file()):
        save_state_dict(clustered_state(state, k), model_path)
    clustered = load_state_dict(model_path)
    entropy = {name: index_entropy_bytes(tensor) for name, tensor in clustered.items()}
    mine = ours(clustered, folder / "ours.wcz")
    theirs = nncodec(model_path, folder / "nncodec", reuse)
    check = reconstruction_check(clustered, load_state_dict(folder / "nncodec" / f"cb-qp{NNCODEC_QP}.safetensors"))
    return {"k": k, "tensors": len(clustered), "parameters": sum(t.numel() for t in clustered.values()),
            "index_entropy_bytes": sum(entropy.values()), "ours": mine, "ours_without_classes_bytes": without_classes(clustered), "nncodec": {**theirs, **check},
            "ours_over_nncodec": mine["bytes"] / theirs["bytes"], "met": mine["exact"] and mine["bytes"] <= theirs["bytes"]}  # fmt: skip


def markdown(report: dict) -> str:
    """The results page: one row per K."""
    lines = [
        "# Lossless: the same clustered tensors, our deep codec against NNCodec",
        "",
        f"Written by `benchmarks/bench_lossless.py`. {_common.machine_line(report['machine'])} "
        "Threads: " + ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in THREAD_VARIABLES) + ".",
        "",
        f"all-MiniLM-L6-v2's {report['rows'][0]['tensors']} weight matrices and embeddings "
        f"({report['rows'][0]['parameters']:,} parameters), each clustered to K values by our k-means; both coders store "
        "these clustered tensors. Ours: the whole `.wcz` file (header included) from `weightcodec.encode_exact`, "
        f"decoded bit for bit. NNCodec {report['rows'][0]['nncodec']['nncodec']}: its codebook mode at QP {NNCODEC_QP} "
        "(grid step 3.1e-5; the distinct values and largest error of its reconstruction are checked), its bitstream's "
        "bytes. Entropy: order-0 entropy of the cluster indices (no codebooks, no headers). Without classes: the same file "
        "with one entropy model per stream (the deep codec's smaller of Huffman and ANS per tensor, codes not split by "
        "row and column classes).",
        "",
        "| K | index entropy B | ours: file B | ours without classes B | NNCodec: bitstream B | ours / NNCodec | ours exact | NNCodec keeps K values (max error) | encode s ours / NNCodec (CPU s) | ours ≤ NNCodec |",
        "|---:|---:|---:|---:|---:|---:|:-:|:-:|---:|:-:|",
    ]  # fmt: skip
    for r in report["rows"]:
        o, n = r["ours"], r["nncodec"]
        lines.append(
            f"| {r['k']} | {r['index_entropy_bytes']:,.0f} | {o['bytes']:,} | {r['ours_without_classes_bytes']:,} | {n['bytes']:,} | {r['ours_over_nncodec']:.4f} | "
            f"{_yes(o['exact'])} | {_yes(n['distinct_values_kept'])} ({n['max_abs_error']:.1e}) | "
            f"{_seconds(o)} / {_seconds(n)} | {_yes(r['met'])} |"
        )  # fmt: skip
    met = all(r["met"] for r in report["rows"])
    lines += ["", f"Target (our deep codec's whole file ≤ NNCodec's bytes on the same clustered tensors, at every K): "
              f"**{'holds' if met else 'not met'}**.", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, nargs="+", default=list(CLUSTERS))
    parser.add_argument("--reuse", action="store_true", help="reuse the cached clustered tensors and NNCodec outputs")
    options = parser.parse_args()
    torch.set_num_threads(1)
    work = cache_dir() / "bench-lossless"
    state = load_state_dict(minilm_dir() / "model.safetensors")
    report = {"machine": _common.machine(), "nncodec_qp": NNCODEC_QP, "rows": []}
    for k in options.clusters:
        report["rows"].append(one_k(state, k, work, options.reuse))
        print(f"K={k}: ours {report['rows'][-1]['ours']['bytes']:,} B, NNCodec {report['rows'][-1]['nncodec']['bytes']:,} B", flush=True)
    _common.write_results("lossless-minilm", report, markdown(report))


if __name__ == "__main__":
    main()
