"""The automatic search: budgets, the choices it makes on a toy problem, the file it writes, threads."""

import json
from dataclasses import replace

import pytest
import torch

from weightcodec import container
from weightcodec.errors import WeightcodecError
from weightcodec.pipelines import auto, report_auto, reproduce, settings, steps
from weightcodec.pipelines.data import Mnist
from weightcodec.pipelines.models import build_model
from weightcodec.pipelines.training import ArrayLoader, TrainConfig, evaluate, train

def _toy_problem(mnist: Mnist, toy: settings.AutoSettings) -> auto.Problem:
    valid = ArrayLoader(mnist.x_valid, mnist.y_valid, batch_size=64)
    loader = lambda config, offset: ArrayLoader(mnist.x_train, mnist.y_train, batch_size=32, shuffle=True, seed=offset)  # noqa: E731
    return auto.Problem(
        training=auto.LoaderTraining(toy, loader, progress=False),
        valid_error=lambda model: evaluate(model, valid),
        n_valid=len(mnist.y_valid),
    )


def _toy_settings(tiny: TrainConfig, **overrides) -> settings.AutoSettings:
    base = settings.AUTO["lenet300"]
    return replace(
        base, deep=replace(base.deep, baseline=tiny), prune=tiny, finetune=tiny, sweep=tiny, cut_epochs=1,
        bits=(1, 2, 3), bias_bits=(1, 2), t_values=(4, 8), **overrides,
    )  # fmt: skip


def test_standard_error_and_budget():
    assert auto.standard_error(1.64, 10_000) == pytest.approx(100 * (0.0164 * 0.9836 / 10_000) ** 0.5)
    assert auto.validation_budget(0.80, 10_000, 1.0) == pytest.approx(0.80 - auto.standard_error(0.80, 10_000))
    assert auto.validation_budget(0.80, 10_000, 0.0) == 0.80


def test_small_candidates_go_from_fewest_bytes_and_include_float16_and_raw(tiny):
    bias = torch.linspace(-1, 1, 300)
    candidates = auto._small_candidates("b", bias, _toy_settings(tiny), seed=0)
    sizes = [record.nbytes for record, _ in candidates]
    assert sizes == sorted(sizes)
    kinds = {(record.encoded.codec, record.dtype) for record, _ in candidates}
    assert {("raw", "float32"), ("raw", "float16"), ("deep", "float32")} <= kinds
    for record, values in candidates:  # what the record decodes to is what the model is given
        decoded = torch.from_numpy(container.from_bytes(container.to_bytes([record])).decode("b")).float()
        assert torch.equal(decoded, values.float()), record.encoded.codec


def test_search_settings_that_do_not_fit_are_listed(tiny, toy_mnist):
    bad = _toy_settings(tiny, levels=({"fc9.weight": 0.5}, {"fc1.weight": 0.9}), pruning="lottery")
    with pytest.raises(WeightcodecError) as info:
        auto.search(build_model("lenet300"), bad, _toy_problem(toy_mnist, bad), progress=False)
    message = str(info.value)
    assert "unknown weight 'fc9.weight'" in message and "unknown pruning 'lottery'" in message
    assert "level 1 names ['fc1.weight'], level 0 ['fc9.weight']" in message


@pytest.fixture(scope="module")
def toy_search(tiny, toy_mnist):
    mnist = toy_mnist
    model = build_model("lenet300", seed=0)
    train(model, ArrayLoader(mnist.x_train, mnist.y_train, batch_size=32, shuffle=True), replace(tiny, epochs=3), progress=False)
    toy = _toy_settings(tiny, target_error=60.0)  # a generous budget: the toy model is far from converged
    records, trace = auto.search(model, toy, _toy_problem(mnist, toy), progress=False)
    return model, records, trace, toy, mnist


def test_search_records_hold_exactly_the_searched_model(toy_search):
    model, records, trace, toy, _ = toy_search
    wcz = container.from_bytes(container.to_bytes(records))
    assert [r.name for r in records] == list(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(torch.from_numpy(wcz.decode(name)).float(), tensor), name


def test_a_step_over_its_share_may_stay_within_one_standard_error_of_where_it_started():
    assert auto._step_allowance(1.5, 1.2, 0.1) == 1.5  # within its share: the share (never above the budget)
    assert auto._step_allowance(1.5, 1.5, 0.1) == 1.5
    assert auto._step_allowance(1.5, 1.9, 0.1) == pytest.approx(2.0)  # over it: one standard error of noise


def test_search_trace_follows_the_budget_and_the_candidates(toy_search):
    model, records, trace, toy, mnist = toy_search
    budget = trace["budget"]["valid_budget"]
    assert budget == pytest.approx(auto.validation_budget(60.0, len(mnist.y_valid), toy.margin_se))
    levels = trace["prune"]["levels"]
    assert 1 <= len(levels) <= len(toy.levels) and trace["prune"]["kept_level"] in range(len(levels))
    for name, layer in trace["layers"].items():
        tried = layer["clusters"]["tried"]
        assert [t["bits"] for t in tried] == sorted(toy.bits)[: len(tried)]  # smallest K first, stops at the first within
        assert all(t["valid_error"] > layer["clusters"]["allowance"] for t in tried[:-1])
        before, allowance = layer["clusters"]["valid_error_before"], layer["clusters"]["allowance"]
        noise = trace["budget"]["standard_error"]
        assert before <= allowance and (allowance <= budget or allowance == pytest.approx(before + noise))
        weight = model.get_parameter(name)
        assert int(torch.unique(weight[weight != 0]).numel()) <= 2 ** layer["clusters"]["bits"]
        record = next(r for r in records if r.name == name)
        assert record.nbytes == layer["encoding"]["bytes"] <= min(layer["encoding"]["deep_bytes"].values())
    for name, small in trace["small"].items():
        record = next(r for r in records if r.name == name)
        assert small["bytes"] == record.nbytes == small["tried"][-1]["bytes"]
        assert [t["bytes"] for t in small["tried"]] == sorted(t["bytes"] for t in small["tried"])


def test_reproduce_sets_the_thread_count_and_says_so(monkeypatch, tmp_path, toy_mnist):
    seen = []

    def probe(model, mnist, out_path, *, quick, seed, progress):
        seen.append(torch.get_num_threads())
        out_path.write_bytes(b"a file")
        return {"ratio": 1.0}

    monkeypatch.setitem(reproduce.METHODS, "probe", probe)
    monkeypatch.setattr(reproduce, "load_mnist", lambda data, progress=True: toy_mnist)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = reproduce.reproduce("lenet300", "probe", results_dir=tmp_path, progress=False)
        assert seen == [reproduce.THREADS] and torch.get_num_threads() == 2  # restored afterwards
        reproduce.reproduce("lenet300", "probe", results_dir=tmp_path, progress=False, threads=3)
        assert seen[-1] == 3
    finally:
        torch.set_num_threads(before)
    assert result["environment"]["torch_threads"] == reproduce.THREADS == 1
    assert "same whatever the machine" in result["environment"]["threads_note"]


def test_auto_markdown_from_results(toy_search, tmp_path):
    result = {
        "model": "lenet300", "target_error": 1.64, "valid_budget": 1.51, "file_bytes": 9000, "ratio": 118.5,
        "original_bytes": 1_066_440, "header_bytes": 1200, "test_error": 1.5, "valid_error": 1.45,
        "baseline_test_error": 0.93, "baseline_valid_error": 0.88, "search": toy_search[2],
        "settings": {"levels": [{}, {}]},
        "choices": [{"name": "fc1.weight", "codec": "deep", "bytes": 7000, "dtype": "float32", "meta": {"entropy": "ans"},
                     "sparsity": 0.986, "clusters": 4, "valid_error_after": 1.4},
                    {"name": "fc1.bias", "codec": "raw", "bytes": 600, "dtype": "float16", "meta": {"dtype": "<f2"}}],
    }  # fmt: skip
    (tmp_path / "reproduce-lenet300-auto.json").write_text(json.dumps(result))
    text = report_auto.write_auto_markdown(tmp_path).read_text()
    assert "| lenet300 | 9000 B | 118.5x | 1.50 | 1.45 |" in text
    assert "| fc1.weight | 98.6 % | 4 | deep (ans) | 7000 |" in text and "| fc1.bias | - | - | raw float16 | 600 |" in text
    assert "What limits it: header and framing 1400 B, weights 7000 B, other tensors 600 B (of 9000 B)" in text
    assert "misses its ratio target" not in text and "| weight | valid error before | allowance |" in text
    within = {**result, "ratio": 99.0, "search": {**toy_search[2], "pruned_valid_error": 0.0}}  # pruned within, under 100x
    (tmp_path / "reproduce-lenet300-auto.json").write_text(json.dumps(within))
    assert "but the file misses its ratio target: each weight's step" in report_auto.write_auto_markdown(tmp_path).read_text()
    with pytest.raises(WeightcodecError, match="no reproduce-<model>-auto.json"):
        report_auto.write_auto_markdown(tmp_path / "nothing")


@pytest.mark.slow
def test_quick_reproduce_auto_is_no_larger_than_deep_and_decodes_to_its_error(mnist, tmp_path):
    """``reproduce lenet300 --method auto --quick``: the file holds the reported error, and beats deep's quick file."""
    result = reproduce.reproduce("lenet300", "auto", quick=True, results_dir=tmp_path, progress=False)
    wcz_path = tmp_path / "reproduce-lenet300-auto-quick.wcz"
    assert json.loads((tmp_path / "reproduce-lenet300-auto-quick.json").read_text()) == result
    decoded, wcz = steps.load_decoded("lenet300", wcz_path)
    assert evaluate(decoded, ArrayLoader(mnist.x_test, mnist.y_test, batch_size=1000)) == result["test_error"]
    assert evaluate(decoded, ArrayLoader(mnist.x_valid, mnist.y_valid, batch_size=1000)) == result["valid_error"]
    assert result["file_bytes"] == wcz_path.stat().st_size == wcz.file_bytes
    deep = reproduce.reproduce("lenet300", "deep", quick=True, results_dir=tmp_path, progress=False)
    assert result["file_bytes"] <= deep["file_bytes"]
    assert result["test_error"] < 25
