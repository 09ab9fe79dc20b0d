"""End to end on real MNIST (``--quick``), and the pieces of the Deep Compression pipeline."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from weightcodec import container
from weightcodec.errors import WeightcodecError
from weightcodec.pipelines import deep_compression, reproduce, settings, steps
from weightcodec.pipelines.models import build_model
from weightcodec.pipelines.training import ArrayLoader


def test_round_sparsities_end_at_target_and_grow():
    rounds = steps.round_sparsities(0.92, 3)
    assert rounds[-1] == pytest.approx(0.92) and rounds == sorted(rounds)


def test_encode_model_stores_planned_weights_deep_and_the_rest_raw(tmp_path):
    model = build_model("lenet300")
    plan = settings.DEEP["lenet300"]
    with torch.no_grad():
        for name in plan.layers:
            weight = model.get_parameter(name)
            weight.copy_(torch.round(weight * 20) / 20 * (torch.rand(weight.shape) > 0.9))
    records = deep_compression.encode_model(model, plan)
    assert {r.name: r.encoded.codec for r in records} == {
        "fc1.weight": "deep", "fc1.bias": "raw", "fc2.weight": "deep",
        "fc2.bias": "raw", "fc3.weight": "deep", "fc3.bias": "raw",
    }  # fmt: skip
    container.write(tmp_path / "m.wcz", records)
    decoded, _ = steps.load_decoded("lenet300", tmp_path / "m.wcz")
    for name, tensor in model.state_dict().items():
        assert torch.equal(decoded.state_dict()[name], tensor), name


def test_cluster_and_finetune_leaves_at_most_k_values_and_keeps_zeros():
    model = build_model("lenet300")
    with torch.no_grad():
        model.fc1.weight.mul_(torch.rand(model.fc1.weight.shape) > 0.9)
    zeros = model.fc1.weight.detach() == 0
    plan = settings.quick_deep(settings.DEEP["lenet300"])
    x = np.random.default_rng(0).random((32, 784), dtype=np.float32)
    loader = ArrayLoader(x, np.arange(32) % 10, batch_size=16)
    steps.cluster_and_finetune(model, plan.layers, plan.finetune, loader, init=plan.init, progress=False)
    assert torch.equal(model.fc1.weight == 0, zeros)
    assert torch.unique(model.fc1.weight[~zeros]).numel() <= 64


def test_unknown_method_lists_the_valid_ones(tmp_path):
    valid = re.escape(str(sorted(reproduce.METHODS)))
    with pytest.raises(WeightcodecError, match=f"unknown method 'zip'; choose one of {valid}"):
        reproduce.reproduce("lenet300", "zip", results_dir=tmp_path)


def test_packaged_full_run_figures_match_the_committed_results():
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    committed = {path.stem for path in results.glob("reproduce-*.json")}
    assert committed == {f"reproduce-{model}-{method}" for model, method in reproduce.FULL_RUNS}
    for (model, method), figures in reproduce.FULL_RUNS.items():
        result = json.loads((results / f"reproduce-{model}-{method}.json").read_text())
        assert not result["quick"]
        for key, value in figures.items():
            assert value == pytest.approx(result[key], abs=0.01), (model, method, key)


@pytest.mark.slow
def test_quick_reproduce_end_to_end(mnist, tmp_path):
    """The README's first command, in under two minutes: a real file, decoded and evaluated."""
    result = reproduce.reproduce("lenet300", "deep", quick=True, results_dir=tmp_path, progress=False)
    wcz = tmp_path / "reproduce-lenet300-deep-quick.wcz"
    assert json.loads((tmp_path / "reproduce-lenet300-deep-quick.json").read_text()) == result
    summary = reproduce.format_summary(result)
    assert "a smoke run" in summary and f"{result['file_bytes']:,} B" in summary and "19,734 B" in summary
    assert result["file_bytes"] == wcz.stat().st_size == container.read(wcz).file_bytes
    assert result["original_bytes"] == 266_610 * 4
    assert result["ratio"] == pytest.approx(result["original_bytes"] / result["file_bytes"])
    assert result["ratio"] > 30 and result["test_error"] < 20 and result["baseline_test_error"] < 20
    layers = {layer["name"]: layer for layer in result["layers"]}
    assert sorted(layers) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]
    fc1 = layers["fc1.weight"]
    assert fc1["nonzero_fraction"] == pytest.approx(0.05, abs=1e-3) and fc1["describe"]["clusters"] <= 64
