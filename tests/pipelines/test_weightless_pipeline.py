"""Weightless end to end: stages in network order, the t sweep and its choice, frozen layers,
the file holding exactly the pipeline's model, figures and the markdown report."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from weightcodec import container
from weightcodec.codecs import deep
from weightcodec.errors import WeightcodecError
from weightcodec.tensors import encode_tensor
from weightcodec.pipelines import plots, report, reproduce, settings, steps, sweep, weightless
from weightcodec.pipelines.data import Mnist
from weightcodec.pipelines.settings import LayerPlan
from weightcodec.pipelines.models import build_model
from weightcodec.pipelines.training import ArrayLoader, TrainConfig, evaluate, train
from weightcodec.simplify import prune

def _tiny_settings(tiny: TrainConfig, model: str = "lenet300", **overrides) -> settings.WeightlessSettings:
    plan = settings.WEIGHTLESS[model]
    deep = replace(plan.deep, baseline=replace(tiny, epochs=2), retrain=tiny, finetune=tiny, prune_rounds=1)
    return replace(
        plan, deep=deep, prune=tiny, prune_rounds=1, finetune=tiny, sweep=tiny, retrain=tiny,
        **{"t_values": (4, 8), **overrides},
    )  # fmt: skip


def _point(t: int, valid: float, filter: str = "bloomier") -> sweep.SweepPoint:
    return sweep.SweepPoint(filter, t, 100 * t, 0, 0.0, valid + 1, valid, valid)


def _sparse_clustered_fc1(model, density: float = 0.1, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        keep = torch.rand(model.fc1.weight.shape, generator=generator) < density
        values = torch.tensor([-0.3, -0.1, 0.1, 0.3])[torch.randint(0, 4, model.fc1.weight.shape, generator=generator)]
        model.fc1.weight.copy_(values * keep)


# ----------------------------------------------------------------------------- pure steps


def test_stages_follow_network_order_for_lenet5():
    order = list(build_model("lenet5").state_dict())
    deep = settings.DEEP["lenet5"].layers
    assert weightless.stages(order, ["fc1.weight"], deep) == [
        weightless.Stage("deep", ("conv1.weight", "conv2.weight")),
        weightless.Stage("weightless", ("fc1.weight",)),
        weightless.Stage("deep", ("fc2.weight",)),
    ]


def test_stages_encoding_every_layer_has_no_deep_stage():
    order = list(build_model("lenet300").state_dict())
    every = settings.all_layers(settings.WEIGHTLESS["lenet300"])
    assert [s.method for s in weightless.stages(order, every.layers, every.deep.layers)] == ["weightless"] * 3
    assert every.layers["fc1.weight"] == settings.WEIGHTLESS["lenet300"].layers["fc1.weight"]


@pytest.mark.parametrize(
    "valid, expected",
    [([3.0, 1.05, 0.98], 6), ([3.0, 1.2, 1.09], 8), ([3.0, 1.5, 1.5], 6), ([0.5, 0.4, 0.3], 4)],
)
def test_choose_t_smallest_within_tolerance_else_lowest_error(valid, expected):
    points = [_point(t, v) for t, v in zip((4, 6, 8), valid)]
    assert sweep.choose_t(points[::-1], reference=1.0, tolerance=0.1) == expected


def test_choose_t_without_points():
    with pytest.raises(WeightcodecError, match="the sweep has no points"):
        sweep.choose_t([], reference=1.0, tolerance=0.1)


def test_freeze_keeps_the_layer_through_training(tiny, toy_mnist):
    model = build_model("lenet300")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps.freeze_(model, ["fc1.weight"])
    mnist = toy_mnist
    train(model, ArrayLoader(mnist.x_train, mnist.y_train, batch_size=32), tiny, progress=False)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == name.startswith("fc1."), name


def test_decode_layer_is_the_stored_weights_plus_false_positives():
    model = build_model("lenet300")
    _sparse_clustered_fc1(model)
    weight = model.fc1.weight.detach()
    record = steps.encode_layer("fc1.weight", weight, t=6, filter="ribbon", seed=3)
    decoded = steps.decode_layer(record)
    keys = weight != 0
    assert torch.equal(decoded[keys], weight[keys])
    false_positives = int((decoded[~keys] != 0).sum())
    expected = int((~keys).sum()) * 4 / 2**6
    assert abs(false_positives - expected) < 5 * expected**0.5  # binomial, 5 sigma
    assert set(decoded[~keys].unique().tolist()) <= set(weight.unique().tolist())


# ----------------------------------------------------------------------------- steps on a model


@pytest.mark.parametrize("pruning", sorted(steps.PRUNERS))
def test_prune_all_hits_each_sparsity_and_keeps_masks_until_unmasked(pruning, tiny, toy_mnist):
    mnist = toy_mnist
    loader = ArrayLoader(mnist.x_train, mnist.y_train, batch_size=32, shuffle=True)
    model = build_model("lenet300")
    plans = {"fc1.weight": LayerPlan(0.9, 2), "fc2.weight": LayerPlan(0.5, 6)}
    steps.prune_all(model, plans, pruning, tiny, loader, progress=False)
    masks = {name: prune.mask_of(model.get_submodule(name[:3])) for name in plans}
    assert {n: float((~m).float().mean()) for n, m in masks.items()} == pytest.approx({"fc1.weight": 0.9, "fc2.weight": 0.5})
    train(model, loader, tiny, progress=False)
    steps.unmask_(model, plans)
    for name, mask in masks.items():
        weight = model.get_parameter(name)
        assert torch.equal(weight != 0, mask) and not prune.is_pruned(model.get_submodule(name[:3])), (pruning, name)


def test_prune_all_unknown_method_lists_the_valid_ones(tiny):
    with pytest.raises(WeightcodecError, match=r"unknown pruning 'lottery'; choose one of \['dns', 'magnitude'\]"):
        steps.prune_all(build_model("lenet300"), {}, "lottery", tiny, None, progress=False)


def test_sweep_retrains_only_later_layers_around_what_the_filter_decodes(tiny, toy_mnist):
    model = build_model("lenet300")
    _sparse_clustered_fc1(model)
    start = {n: t.clone() for n, t in model.state_dict().items()}
    mnist = toy_mnist
    loader = ArrayLoader(mnist.x_train, mnist.y_train, batch_size=32, shuffle=True)
    splits = steps.Splits(ArrayLoader(mnist.x_valid, mnist.y_valid, batch_size=64),
                               ArrayLoader(mnist.x_test, mnist.y_test, batch_size=64))  # fmt: skip
    points, kept = sweep.sweep_t(model, "fc1.weight", (1, 4, 8), tiny, loader, splits, progress=False)
    assert [(p.filter, p.t) for p in points] == [("bloomier", 4), ("bloomier", 8)]  # t = 1 cannot hold K = 4 codes
    assert all(torch.equal(model.state_dict()[n], start[n]) for n in start), "the model is left as it came"
    for point in points:
        assert point.expected_false_positives == pytest.approx(int((start["fc1.weight"] == 0).sum()) * 4 / 2**point.t)
    assert points[0].false_positives > points[1].false_positives
    assert sorted(kept) == [4, 8]
    for t, (record, state) in kept.items():
        assert record.encoded.meta["filter"] == "bloomier" and record.encoded.meta["t"] == t
        assert torch.equal(state["fc1.weight"], steps.decode_layer(record))
        assert torch.equal(state["fc1.bias"], start["fc1.bias"])
        assert not torch.equal(state["fc2.weight"], start["fc2.weight"])
        point = next(p for p in points if p.t == t)
        assert record.nbytes == point.bytes
        restored = build_model("lenet300")
        restored.load_state_dict(state)
        assert evaluate(restored, splits.valid) == point.valid_error


def _toy_splits(mnist: Mnist) -> steps.Splits:
    return steps.Splits(ArrayLoader(mnist.x_valid, mnist.y_valid, batch_size=64), ArrayLoader(mnist.x_test, mnist.y_test, batch_size=64))


def test_best_seed_keeps_the_seed_of_lowest_validation_loss(toy_mnist):
    model = build_model("lenet300")
    _sparse_clustered_fc1(model)
    clustered = model.fc1.weight.detach().clone()
    valid = _toy_splits(toy_mnist).valid
    (record, decoded, encoding, seed), tried = sweep.best_seed(
        model, "fc1.weight", clustered, t=4, filter="ribbon", seeds=(0, 1000, 2000), valid=valid
    )
    assert [s["seed"] for s in tried] == [0, 1000, 2000]
    assert len({s["false_positives"] for s in tried}) > 1, "seeds change which zeros read back as weights"
    assert seed == min(tried, key=lambda s: s["valid_loss"])["seed"] and record.encoded.meta["seed"] == seed
    assert torch.equal(model.fc1.weight.detach(), decoded) and torch.equal(decoded, steps.decode_layer(record))
    assert encoding.false_positives == next(s for s in tried if s["seed"] == seed)["false_positives"]
    assert sweep.validation_loss(model, valid) == (
        pytest.approx(next(s["valid_loss"] for s in tried if s["seed"] == seed)), evaluate(model, valid)
    )


def test_best_seed_prefers_seeds_within_the_byte_limit(toy_mnist):
    model = build_model("lenet300")
    _sparse_clustered_fc1(model, density=0.02)
    clustered = model.fc1.weight.detach().clone()
    valid = _toy_splits(toy_mnist).valid
    find = lambda limit: sweep.best_seed(  # noqa: E731
        model, "fc1.weight", clustered, t=6, filter="ribbon", seeds=range(0, 8000, 1000), valid=valid, max_bytes=limit
    )
    _, tried = find(float("inf"))
    smallest = min(s["bytes"] for s in tried)
    (record, _, _, seed), _ = find(smallest)
    assert record.nbytes == smallest
    assert seed == min((s for s in tried if s["bytes"] == smallest), key=lambda s: s["valid_loss"])["seed"]
    (_, _, _, seed), _ = find(0)  # none fits: the lowest loss
    assert seed == min(tried, key=lambda s: s["valid_loss"])["seed"]


def test_sweep_with_seeds_records_every_seed_tried(tiny, toy_mnist):
    model = build_model("lenet300")
    _sparse_clustered_fc1(model)
    mnist = toy_mnist
    loader = ArrayLoader(mnist.x_train, mnist.y_train, batch_size=32, shuffle=True)
    points, kept = sweep.sweep_t(model, "fc1.weight", (4,), tiny, loader, _toy_splits(mnist), filter="ribbon", seeds=3, progress=False)
    [point] = points
    assert point.clusters == 4 and [s["seed"] for s in point.seeds] == [0, sweep.SEED_STRIDE, 2 * sweep.SEED_STRIDE]
    assert point.seed in [s["seed"] for s in point.seeds] and kept[4][0].encoded.meta["seed"] == point.seed
    assert point.valid_error_encoded == next(s["valid_error"] for s in point.seeds if s["seed"] == point.seed)


@pytest.mark.parametrize(
    ("max_bytes", "tolerance", "expected"),
    [(float("inf"), 0.0, (10, 4)), (900, 0.0, (8, 2)), (float("inf"), 0.5, (8, 2)), (100, 0.0, (10, 4))],
)
def test_choose_point_smallest_within_bytes_and_tolerance(max_bytes, tolerance, expected):
    point = lambda t, k, valid: sweep.SweepPoint("ribbon", t, 100 * t + k, 0, 0.0, valid, valid, valid, clusters=k)  # noqa: E731
    points = [point(8, 4, 1.2), point(8, 2, 1.0), point(10, 4, 0.9), point(10, 2, 1.1)]
    chosen = sweep.choose_point(points, reference=0.9, tolerance=tolerance, max_bytes=max_bytes)
    assert (chosen.t, chosen.clusters) == expected


def test_refine_moves_only_the_codebook_of_the_filter(toy_mnist):
    model = build_model("lenet300")
    _sparse_clustered_fc1(model)
    clustered = model.fc1.weight.detach().clone()
    record = steps.encode_layer("fc1.weight", clustered, t=5, filter="ribbon", seed=3)
    with torch.no_grad():
        model.fc1.weight.copy_(steps.decode_layer(record))
    before = {n: t.clone() for n, t in model.state_dict().items()}
    mnist = toy_mnist
    loader = ArrayLoader(mnist.x_train, mnist.y_train, batch_size=32, shuffle=True)
    adam = TrainConfig(epochs=1, lr=1e-3, optimizer="adam", weight_decay=0.0, batch_size=32)
    refined, kept_order = steps.refine_stored_centroids(model, "fc1.weight", clustered, record, adam, loader, progress=False)
    assert kept_order
    assert refined.encoded.sections["table"] == record.encoded.sections["table"]
    assert refined.encoded.meta == record.encoded.meta
    assert refined.encoded.sections["codebook"] != record.encoded.sections["codebook"]
    weight = model.fc1.weight.detach()
    assert type(model.fc1.weight) is torch.nn.Parameter and torch.equal(weight, steps.decode_layer(refined))
    assert torch.equal(weight != 0, before["fc1.weight"] != 0), "the same false positives"
    assert len(torch.unique(weight[weight != 0])) == 4
    assert not torch.equal(model.fc1.bias, before["fc1.bias"]) and not torch.equal(model.fc3.weight, before["fc3.weight"])


def test_refine_puts_the_model_back_if_the_centroids_reorder(monkeypatch, tiny):
    model = build_model("lenet300")
    _sparse_clustered_fc1(model)
    clustered = model.fc1.weight.detach().clone()
    record = steps.encode_layer("fc1.weight", clustered, t=5, filter="ribbon")
    with torch.no_grad():
        model.fc1.weight.copy_(steps.decode_layer(record))
    before = {n: t.clone() for n, t in model.state_dict().items()}

    def reorder(model, *args, **kwargs):  # training that moves the centroids past each other
        with torch.no_grad():
            model.fc1.parametrizations.weight.original.mul_(-1)
            model.fc3.weight.add_(1.0)

    monkeypatch.setattr(steps, "train", reorder)
    result, kept_order = steps.refine_stored_centroids(model, "fc1.weight", clustered, record, tiny, None, progress=False)
    assert not kept_order and result is record
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_refine_refuses_a_model_that_does_not_hold_the_record(tiny):
    model = build_model("lenet300")
    _sparse_clustered_fc1(model)
    record = steps.encode_layer("fc1.weight", model.fc1.weight.detach(), t=5, filter="ribbon")
    with pytest.raises(WeightcodecError, match="does not hold what its record decodes"):
        steps.refine_stored_centroids(model, "fc1.weight", model.fc1.weight.detach(), record, tiny, None, progress=False)


def test_encode_model_mixes_weightless_deep_and_raw():
    model = build_model("lenet300")
    _sparse_clustered_fc1(model)
    with torch.no_grad():
        model.fc2.weight.copy_(torch.round(model.fc2.weight * 20) / 20 * (model.fc2.weight.abs() > 0.05))
        model.fc3.weight.copy_(torch.round(model.fc3.weight * 20) / 20)
    record = steps.encode_layer("fc1.weight", model.fc1.weight.detach(), t=8, filter="bloomier")
    records = weightless.encode_model(model, settings.WEIGHTLESS["lenet300"], {"fc1.weight": record})
    assert {r.name: r.encoded.codec for r in records} == {
        "fc1.weight": "weightless", "fc1.bias": "raw", "fc2.weight": "deep",
        "fc2.bias": "raw", "fc3.weight": "deep", "fc3.bias": "raw",
    }  # fmt: skip
    assert records[0] is record


def test_settings_that_do_not_fit_are_listed_before_training(tmp_path, tiny, toy_mnist):
    bad = replace(
        _tiny_settings(tiny),
        layers={"fc9.weight": LayerPlan(0.9, 6)},
        pruning="lottery",
        reference="dense",
        t_values=(4, 5),
        filters=("bloomier", "cuckoo"),
    )
    with pytest.raises(WeightcodecError) as info:
        weightless.run("lenet300", toy_mnist, bad, tmp_path / "m.wcz", progress=False)
    message = str(info.value)
    assert message.startswith("Weightless settings do not fit LeNet300: unknown layer 'fc9.weight'; ")
    assert "unknown pruning 'lottery' (choose one of ['dns', 'magnitude'])" in message
    assert "unknown reference 'dense' (choose one of ['baseline', 'unencoded'])" in message
    assert "fc9.weight: K = 64 clusters need t >= 6, but t_values stop at 5" in message
    assert f"filters ['bloomier', 'cuckoo'] with stored filter {bad.filter!r}" in message


# ----------------------------------------------------------------------------- the whole pipeline


def _check_result(result: dict, wcz_path, mnist: Mnist, model_name: str) -> None:
    """The file holds the pipeline's model: decoded error == measured error, figures consistent."""
    decoded, wcz = steps.load_decoded(model_name, wcz_path)
    test = ArrayLoader(mnist.x_test, mnist.y_test, batch_size=1000)
    assert evaluate(decoded, test) == result["test_error"] == result["pipeline_test_error"]
    assert result["file_bytes"] == wcz_path.stat().st_size == wcz.file_bytes
    assert result["ratio"] == pytest.approx(result["original_bytes"] / result["file_bytes"])
    [layer] = result["encoded_layers"]
    assert layer["name"] == result["largest_layer"] == "fc1.weight"
    record = wcz.record("fc1.weight")
    assert record.encoded.codec == "weightless" and layer["bytes"] == record.nbytes
    assert result["largest_layer_ratio"] == pytest.approx(4 * layer["elements"] / layer["bytes"])
    assert result["largest_layer_vs_deep"] == pytest.approx(layer["deep_codec_bytes"] / layer["bytes"])
    stored = wcz.decode("fc1.weight")
    assert layer["n"] + layer["false_positives"] == np.count_nonzero(stored)
    assert layer["K"] == len(np.unique(stored[stored != 0])) and layer["t"] == record.encoded.meta["t"]
    [stage] = [s for s in result["stages"] if s["method"] == "weightless"]
    plan = settings.WEIGHTLESS[model_name]
    assert layer["t"] == stage["chosen_t"] and layer["filter"] == plan.filter
    assert [(a["filter"], a["t"]) for a in stage["alternatives"]] == [
        (f, layer["t"]) for f in plan.filters if f != plan.filter
    ]
    assert {(e["filter"], e["t"]) for e in stage["encodings"]} >= {(p["filter"], p["t"]) for p in stage["sweep"]}
    assert {r.name: r.encoded.codec for r in wcz.records if r.name != "fc1.weight" and r.name.endswith("weight")} == {
        "fc2.weight": "deep", "fc3.weight": "deep"
    }
    assert result["identical_deep_file_bytes"] == weightless.deep_on_identical_weights(wcz)["file_bytes"]
    assert layer["identical_deep_bytes"]["ans"] == container.TensorRecord(
        "fc1.weight", "float32", record.shape, deep.encode(stored, entropy="ans")
    ).nbytes


def test_deep_on_identical_weights_is_the_same_file_with_the_filter_stored_losslessly(tmp_path):
    model = build_model("lenet300")
    _sparse_clustered_fc1(model)
    record = steps.encode_layer("fc1.weight", model.fc1.weight.detach(), t=5, filter="ribbon")
    others = [encode_tensor(n, t, "raw") for n, t in model.state_dict().items() if n != "fc1.weight"]
    container.write(tmp_path / "m.wcz", [record, *others], {"model": "toy"})
    wcz = container.read(tmp_path / "m.wcz")
    result = weightless.deep_on_identical_weights(wcz)
    for coder in ("huffman", "ans"):
        encoded = deep.encode(steps.decode_layer(record).numpy(), entropy=coder)
        assert result["layers"]["fc1.weight"]["identical_deep_bytes"][coder] == encoded.nbytes
        lossless = [container.TensorRecord("fc1.weight", "float32", record.shape, encoded), *others]
        assert result["file_bytes"][coder] == len(container.to_bytes(lossless, {"model": "toy"}))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny, toy_mnist):
    """One whole run on toy data (its baseline cached in a private folder): result, file, data."""
    folder = tmp_path_factory.mktemp("toy")
    mnist = toy_mnist
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WEIGHTCODEC_CACHE", str(folder / "cache"))
        result = weightless.run("lenet300", mnist, _tiny_settings(tiny), folder / "m.wcz", progress=False)
    return result, folder, mnist


def test_run_on_toy_data_writes_the_model_it_measured(toy_run):
    result, folder, mnist = toy_run
    _check_result(result, folder / "m.wcz", mnist, "lenet300")
    assert json.loads(json.dumps(result)) == result  # JSON-able, and read back equal
    paths = plots.weightless_figures(result, folder / "weightless-toy")
    assert [p.name for p in paths] == [
        "weightless-toy-error-vs-t.png", "weightless-toy-bytes-vs-t.png",
        "weightless-toy-false-positives-vs-t.png", "weightless-toy-fc1-histogram.png",
    ]  # fmt: skip
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_run_with_k_candidates_seeds_ratio_floor_and_refinement(tmp_path, tiny, toy_mnist):
    """The levers of the LeNet-5 plan on toy data: every K swept, the choice within the ratio, refined."""
    mnist = toy_mnist
    adam = TrainConfig(epochs=1, lr=1e-4, optimizer="adam", weight_decay=0.0, batch_size=32)
    toy = _tiny_settings(tiny, bits_tried=(1,), filter_seeds=2, min_ratio=20.0, refine=adam, t_values=(4, 6))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WEIGHTCODEC_CACHE", str(tmp_path / "cache"))
        result = weightless.run("lenet300", mnist, toy, tmp_path / "m.wcz", progress=False)
    _check_result(result, tmp_path / "m.wcz", mnist, "lenet300")
    [stage] = [s for s in result["stages"] if s["method"] == "weightless"]
    assert [k["K"] for k in stage["clusters_tried"]] == [8, 2]
    assert all(len(p["seeds"]) == 2 for k in stage["clusters_tried"] for p in k["sweep"])
    [layer] = result["encoded_layers"]
    assert layer["K"] == 2 ** stage["plan"]["bits"] and layer["t"] == stage["chosen_t"]
    assert stage["max_bytes"] == pytest.approx(4 * layer["elements"] / 20.0)
    fitting = [p for k in stage["clusters_tried"] for p in k["sweep"] if p["bytes"] <= stage["max_bytes"]]
    if fitting:
        assert layer["bytes"] <= stage["max_bytes"]
    assert set(stage["after_steps"]) == {"swept", "retrained", "refined"}
    assert stage["after_steps"]["refined"]["test_error"] == stage["test_error"]
    assert stage["after_steps"]["refined"]["centroids_kept_order"]
    text = report.markdown_report({"lenet300": result}, {})
    assert "## lenet300: what each lever gave (fc1.weight at " in text
    assert f"Chosen: K = {layer['K']}, t = {layer['t']}, seed {stage['chosen_seed']}." in text
    assert f"| {result['identical_deep_file_bytes']['ans']} B |" in text
    same = layer["identical_deep_bytes"]
    assert f"| {same['huffman']} / {same['ans']} B |" in text
    assert text.count("| 8 | clustered |") == 1 and text.count("| 2 | clustered |") == 1


def test_markdown_report_from_results(toy_run, tmp_path):
    result = toy_run[0]
    (tmp_path / "reproduce-lenet300-weightless.json").write_text(json.dumps(result))
    deep = {"test_error": 1.5, "file_bytes": 30000, "ratio": 35.5, "layers": [{"name": "fc1.weight", "bytes": 20000}]}
    (tmp_path / "reproduce-lenet300-deep.json").write_text(json.dumps(deep))
    text = report.write_markdown(tmp_path).read_text()
    layer = result["encoded_layers"][0]
    assert f"| {layer['bytes']} |" in text and f"| {20000 / layer['bytes']:.2f}x |" in text
    assert "| lenet300 |" in text and "| 1.50 |" in text and "496x" in text
    assert f"(target <= 1.55: {'met' if result['test_error'] <= 1.55 else 'not met'})" in text
    assert f"(target >= 1.5x: {'met' if 20000 >= 1.5 * layer['bytes'] else 'not met'})" in text
    assert report.SAME_WEIGHTS_LIMIT in text
    [stage] = [s for s in result["stages"] if s["method"] == "weightless"]
    assert text.count("| ribbon |") == 1 + len(stage["sweep"]) and text.count("| bloomier |") == 1  # table + sweep
    assert "### lenet300 fc1.weight: chosen t = " in text
    with pytest.raises(WeightcodecError, match="no reproduce-<model>-weightless.json"):
        report.write_markdown(tmp_path / "nothing")


@pytest.mark.slow
def test_quick_reproduce_weightless_on_mnist(mnist, tmp_path):
    """``reproduce lenet300 --method weightless --quick``: what the user gets is what was measured."""
    result = reproduce.reproduce("lenet300", "weightless", quick=True, results_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "reproduce-lenet300-weightless-quick.json").read_text()) == result
    _check_result(result, tmp_path / "reproduce-lenet300-weightless-quick.wcz", mnist, "lenet300")
    assert result["test_error"] < 25 and result["largest_layer_ratio"] > 50
    assert sorted(p.rsplit("/", 1)[1] for p in result["figures"]) == sorted(
        f"weightless-lenet300-quick-{kind}.png" for kind in ("error-vs-t", "bytes-vs-t", "false-positives-vs-t", "fc1-histogram")
    )


@pytest.mark.slow
def test_quick_reproduce_weightless_on_every_layer(mnist, tmp_path):
    """``reproduce lenet300 --method weightless-all --quick``: every weight layer in a filter, as measured."""
    result = reproduce.reproduce("lenet300", "weightless-all", quick=True, results_dir=tmp_path, progress=False)
    wcz_path = tmp_path / "reproduce-lenet300-weightless-all-quick.wcz"
    decoded, wcz = steps.load_decoded("lenet300", wcz_path)
    assert evaluate(decoded, ArrayLoader(mnist.x_test, mnist.y_test, batch_size=1000)) == result["test_error"]
    assert {r.name: r.encoded.codec for r in wcz.records if r.name.endswith("weight")} == dict.fromkeys(
        ["fc1.weight", "fc2.weight", "fc3.weight"], "weightless"
    )
    assert [layer["name"] for layer in result["encoded_layers"]] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert all(p.rsplit("/", 1)[1].startswith("weightless-all-lenet300-quick-") for p in result["figures"])
