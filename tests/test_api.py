import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import weightcodec
from weightcodec import api, container
from weightcodec.errors import EncodeError, WeightcodecError
from weightcodec.simplify import cluster, prune

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# ----------------------------------------------------------------------------- models that are not LeNet


class Block(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layer1 = Block(16)
        self.layer2 = Block(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(x.mean(dim=(2, 3)))


class EmbeddingMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(200, 24)
        self.fc1 = nn.Linear(24, 48)
        self.fc2 = nn.Linear(48, 5)

    def forward(self, tokens):
        return self.fc2(torch.relu(self.fc1(self.embed(tokens).mean(dim=1))))


def trained_resnet() -> TinyResNet:
    torch.manual_seed(0)
    model = TinyResNet()
    model.train()
    with torch.no_grad():  # give the batch norms real running statistics
        for _ in range(3):
            model(torch.randn(8, 3, 8, 8))
    return model.eval()


def embedding_mlp() -> EmbeddingMLP:
    torch.manual_seed(1)
    return EmbeddingMLP().eval()


RESNET_RECIPE = {
    "rule": [
        {"match": "stem.weight", "method": "deep", "clusters": 32},
        {"match": "fc.weight", "method": "deep", "sparsity": 0.5, "clusters": 16},
        {"match": "layer*.conv*.weight", "method": "deep", "sparsity": 0.7, "clusters": 16, "index_bits": 4},
    ]
}
MLP_RECIPE = {
    "rule": [
        {"match": "embed.weight", "method": "deep", "sparsity": 0.8, "clusters": 16},
        {"match": "fc1.weight", "method": "weightless", "sparsity": 0.8, "clusters": 8, "t": 10},
        {"match": "fc2.weight", "method": "raw"},
    ]
}


def fresh_like(model: nn.Module) -> nn.Module:
    other = copy.deepcopy(model)
    for tensor in other.state_dict().values():
        tensor.zero_()
    return other


# ----------------------------------------------------------------------------- end to end


def test_the_package_imports_its_names_and_submodules_on_first_use():
    from weightcodec.pipelines import auto_model

    assert weightcodec.load is api.load and weightcodec.compress_to_error is auto_model.compress_to_error
    assert weightcodec.WeightcodecError is WeightcodecError and weightcodec.codecs.ribbon.W == 64
    assert set(weightcodec.__all__) <= set(dir(weightcodec))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        weightcodec.no_such_name  # noqa: B018


def test_resnet_with_batchnorm_roundtrip_is_exact(tmp_path):
    model = trained_resnet()
    original = copy.deepcopy(model)
    x = torch.randn(4, 3, 8, 8)
    data = weightcodec.compress(model, RESNET_RECIPE, tmp_path / "resnet.wcz")
    assert (tmp_path / "resnet.wcz").read_bytes() == data
    # the model was simplified in place: sparse, clustered, its norms untouched
    assert prune.sparsity_of(model.layer1.conv1.weight) == pytest.approx(0.7, abs=1e-3)
    assert torch.unique(model.layer1.conv1.weight).numel() <= 16 + 1
    assert torch.equal(model.bn.running_var, original.bn.running_var)
    restored = fresh_like(model)
    weightcodec.load_into(restored, tmp_path / "resnet.wcz")
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
    codecs = {r.name: r.encoded.codec for r in container.read(tmp_path / "resnet.wcz").records}
    assert codecs["layer2.conv2.weight"] == "deep" and codecs["bn.running_mean"] == "raw"
    assert codecs["bn.num_batches_tracked"] == "raw"


def test_embedding_mlp_with_deep_weightless_and_raw(tmp_path):
    model = embedding_mlp()
    tokens = torch.randint(0, 200, (6, 7))
    path = tmp_path / "mlp.wcz"
    weightcodec.compress(model, MLP_RECIPE, path)
    state = weightcodec.load(path)
    assert torch.equal(state["embed.weight"], model.embed.weight)  # deep: exact
    assert torch.equal(state["fc2.weight"], model.fc2.weight)  # raw: exact
    stored = model.fc1.weight != 0
    assert torch.equal(state["fc1.weight"][stored], model.fc1.weight[stored])  # weightless: stored weights exact
    false_positives = int((state["fc1.weight"][~stored] != 0).sum())
    assert false_positives <= 0.05 * int((~stored).sum())  # K / 2**t = 0.8 % expected
    only_deep = copy.deepcopy(model)
    only_deep.fc1.weight.data = state["fc1.weight"]
    restored = fresh_like(model)
    weightcodec.load_into(restored, path)
    with torch.no_grad():
        assert torch.equal(restored(tokens), only_deep(tokens))


def test_same_input_twice_gives_identical_bytes():
    first = weightcodec.compress(trained_resnet(), RESNET_RECIPE, seed=3)
    second = weightcodec.compress(trained_resnet(), RESNET_RECIPE, seed=3)
    assert first == second
    mlp = [weightcodec.compress(embedding_mlp(), MLP_RECIPE, seed=5) for _ in range(2)]
    assert mlp[0] == mlp[1]


def test_state_dict_is_not_modified_and_matches_the_model_path():
    model = trained_resnet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    from_state = weightcodec.compress(state, RESNET_RECIPE)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # in a bare state_dict the >= 2-D floating tensors are the compressible ones: same as the model's here
    assert from_state == weightcodec.compress(model, RESNET_RECIPE)


def test_default_recipe_clusters_every_weight_and_already_clustered_is_lossless():
    torch.manual_seed(0)
    state = {"w": torch.randn(40, 30), "few": torch.tensor([[0.0, 1.5], [1.5, -2.0]]), "b": torch.randn(30)}
    decoded = weightcodec.load_bytes(weightcodec.compress(state))
    assert 16 < torch.unique(decoded["w"]).numel() <= 32  # linear init may leave a tail centroid empty
    assert torch.equal(decoded["few"], state["few"]) and torch.equal(decoded["b"], state["b"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_are_preserved(dtype):
    torch.manual_seed(0)
    state = {"w": torch.randn(16, 8).to(dtype), "b": torch.randn(8).to(dtype)}
    simplified, _ = api.apply_recipe(state, {"rule": [{"match": "w", "method": "deep", "clusters": 8, "sparsity": 0.5}]})
    decoded = weightcodec.load_bytes(weightcodec.compress(state, {"rule": [{"match": "w", "method": "deep", "clusters": 8, "sparsity": 0.5}]}))
    assert decoded["w"].dtype == dtype and decoded["b"].dtype == dtype
    assert torch.equal(decoded["w"], simplified["w"]) and torch.equal(decoded["b"], state["b"])


def test_training_hook_runs_at_both_stages_and_keeps_zeros_and_ties(tmp_path):
    (tmp_path / "hook_module.py").write_text(
        "import torch\n"
        "from weightcodec.simplify import cluster, prune\n"
        "SEEN = []\n"
        "def hook(model, stage):\n"
        "    SEEN.append((stage, prune.is_pruned(model.fc1), cluster.is_shared(model.fc1)))\n"
        "    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)\n"
        "    for _ in range(5):\n"
        "        opt.zero_grad()\n"
        "        model(torch.randint(0, 200, (4, 3))).square().mean().backward()\n"
        "        opt.step()\n"
    )
    recipe_path = tmp_path / "recipe.toml"
    recipe_path.write_text(
        '[[rule]]\nmatch = "fc1.weight"\nmethod = "deep"\nsparsity = 0.75\nclusters = 4\n'
        '[[rule]]\nmatch = "fc2.weight"\nmethod = "deep"\nclusters = 300\n'  # deep max 256: rejected
    )
    with pytest.raises(EncodeError, match="clusters=300 is more than"):
        weightcodec.load_recipe(recipe_path)
    recipe_path.write_text(
        '[[rule]]\nmatch = "fc1.weight"\nmethod = "deep"\nsparsity = 0.75\nclusters = 4\n'
        '[[rule]]\nmatch = "fc2.weight"\nmethod = "deep"\nclusters = 256\n'  # 240 values: kept as they are
        '[training]\nhook = "hook_module:hook"\n'
    )
    model = embedding_mlp()
    fc2_before = model.fc2.weight.detach().clone()
    embed_before = model.embed.weight.detach().clone()
    weightcodec.compress(model, recipe_path, tmp_path / "m.wcz")
    import hook_module

    assert hook_module.SEEN == [("pruned", True, False), ("clustered", False, True)]
    assert prune.sparsity_of(model.fc1.weight) == pytest.approx(0.75, abs=1e-3)
    assert torch.unique(model.fc1.weight[model.fc1.weight != 0]).numel() <= 4
    assert torch.equal(model.fc2.weight, fc2_before)  # already <= K values: frozen while the hook trained
    assert not torch.equal(model.embed.weight, embed_before)  # not in the recipe: trained, stored raw
    assert model.fc2.weight.requires_grad
    assert not cluster.is_shared(model.fc1) and not prune.is_pruned(model.fc1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weightcodec.load(tmp_path / "m.wcz").items())


def test_failing_hook_leaves_the_model_as_it_was(tmp_path):
    (tmp_path / "bad_hook.py").write_text("def hook(model, stage):\n    if stage == 'clustered':\n        raise RuntimeError('boom')\n")
    (tmp_path / "r.toml").write_text('[[rule]]\nmatch = "*"\nmethod = "deep"\nsparsity = 0.5\nclusters = 4\n[training]\nhook = "bad_hook:hook"\n')
    model = embedding_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = sorted(n for n, _ in model.named_parameters())
    with pytest.raises(RuntimeError, match="boom"):
        weightcodec.compress(model, tmp_path / "r.toml", tmp_path / "out.wcz")
    assert not (tmp_path / "out.wcz").exists()
    assert sorted(n for n, _ in model.named_parameters()) == names  # no masks or ties left behind
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_example_recipe_runs_end_to_end(tmp_path):
    import sys

    sys.path.insert(0, str(EXAMPLES))
    try:
        import tiny_model
    finally:
        sys.path.remove(str(EXAMPLES))
    model = tiny_model.build()
    baseline = tiny_model.accuracy(model)
    weightcodec.compress(model, EXAMPLES / "recipe.toml", tmp_path / "tiny.wcz")
    simplified = tiny_model.accuracy(model)
    restored = tiny_model.TinyTextClassifier()
    weightcodec.load_into(restored, tmp_path / "tiny.wcz")
    assert torch.equal(restored.embed.weight, model.embed.weight)
    assert prune.sparsity_of(model.embed.weight) == pytest.approx(0.8)
    assert baseline >= 0.9 and simplified >= baseline - 0.1 and tiny_model.accuracy(restored) >= baseline - 0.15
    assert (tmp_path / "tiny.wcz").stat().st_size * 5 < 4 * sum(t.numel() for t in model.state_dict().values())


# ----------------------------------------------------------------------------- bad input


def test_nan_and_inf_weights_are_all_reported():
    state = {"a": torch.tensor([[1.0, float("nan")], [2.0, 3.0]]), "b": torch.full((2, 2), float("inf")), "c": torch.randn(3, 3)}
    with pytest.raises(EncodeError) as info:
        weightcodec.compress(state, {"rule": [{"match": "*", "method": "deep", "clusters": 2}]})
    assert str(info.value) == (
        "a holds 1 NaN and 0 infinite values; compress a finite model; b holds 0 NaN and 4 infinite values; compress a finite model"
    )


def test_raw_tensors_may_hold_inf():
    state = {"mask": torch.tensor([[0.0, float("-inf")]])}
    decoded = weightcodec.load_bytes(weightcodec.compress(state, {"rule": [{"match": "*", "method": "raw"}]}))
    assert torch.equal(decoded["mask"], state["mask"])


def test_k_larger_than_distinct_weights_left_after_pruning():
    torch.manual_seed(0)
    state = {"small": torch.randn(4, 4), "big": torch.randn(40, 40)}
    with pytest.raises(EncodeError) as info:
        weightcodec.compress(state, {"rule": [{"match": "*", "method": "deep", "clusters": 8, "sparsity": 0.75}]})
    assert str(info.value) == (
        "small: clusters=8 is larger than the 4 distinct non-zero weights left at sparsity 0.75; "
        "use clusters <= 4 or a lower sparsity for it"
    )


def test_zero_element_tensor_in_a_rule():
    state = {"empty": torch.zeros(0, 4), "w": torch.randn(3, 3)}
    with pytest.raises(EncodeError, match=r"empty has zero elements \(shape \(0, 4\)\), nothing to deep-encode"):
        weightcodec.compress(state)
    recipe = {"rule": [{"match": "empty", "method": "raw"}, {"match": "*", "method": "deep"}]}
    assert weightcodec.load_bytes(weightcodec.compress(state, recipe))["empty"].shape == (0, 4)


def test_recipe_naming_no_parameter():
    with pytest.raises(EncodeError, match=r"rule 1 \(match 'conv\*'\) matches no compressible parameter"):
        weightcodec.compress(embedding_mlp(), {"rule": [{"match": "conv*", "method": "deep"}]})


def test_biases_are_not_compressible_in_a_model():
    assert api.compressible_names(embedding_mlp()) == ["embed.weight", "fc1.weight", "fc2.weight"]
    with pytest.raises(EncodeError, match="matches no compressible parameter"):
        weightcodec.compress(embedding_mlp(), {"rule": [{"match": "*.bias", "method": "deep"}]})


def test_hook_needs_a_model(tmp_path):
    recipe = {"rule": [{"match": "*", "method": "deep"}], "training": {"hook": "json:dumps"}}
    with pytest.raises(EncodeError, match="training hook 'json:dumps' needs a model"):
        weightcodec.compress(embedding_mlp().state_dict(), recipe)


def test_load_into_a_model_that_does_not_fit(tmp_path):
    weightcodec.compress(embedding_mlp(), None, tmp_path / "m.wcz")
    with pytest.raises(WeightcodecError, match=r"m.wcz does not fit TinyResNet: Error\(s\) in loading state_dict"):
        weightcodec.load_into(TinyResNet(), tmp_path / "m.wcz")


def test_load_model_sources(tmp_path):
    torch.save(embedding_mlp().state_dict(), tmp_path / "sd.pt")
    assert set(api.load_model(tmp_path / "sd.pt")) == set(embedding_mlp().state_dict())
    (tmp_path / "factory.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(3, 2)\ndef bad():\n    return 3\n")
    model = api.load_model("factory:build", search=[tmp_path])
    assert isinstance(model, nn.Linear)
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "lin.pt")
    loaded = api.load_model("factory:build", weights=tmp_path / "lin.pt", search=[tmp_path])
    assert torch.equal(loaded.weight, torch.load(tmp_path / "lin.pt")["weight"])
    with pytest.raises(WeightcodecError, match="returned int, expected a torch.nn.Module"):
        api.load_model("factory:bad", search=[tmp_path])
    with pytest.raises(WeightcodecError, match="is a state_dict already"):
        api.load_model(tmp_path / "sd.pt", weights=tmp_path / "lin.pt")
    with pytest.raises(WeightcodecError, match="sd.pt does not fit Linear"):
        api.load_model("factory:build", weights=tmp_path / "sd.pt", search=[tmp_path])


def test_deep_entropy_auto_keeps_the_smaller_coder():
    g = torch.Generator().manual_seed(0)
    sd = {"dense.weight": torch.randn(200, 100, generator=g), "sparse.weight": torch.randn(200, 100, generator=g)}
    sizes = {}
    for entropy in ("huffman", "ans", None):
        rule = {"match": "*", "method": "deep", "clusters": 16, **({"entropy": entropy} if entropy else {})}
        rules = [{"match": "sparse.weight", **rule, "sparsity": 0.95}, rule]
        wcz = container.from_bytes(api.compress(sd, {"rule": rules}))
        sizes[entropy] = {rec.name: (rec.nbytes, rec.encoded.meta["entropy"]) for rec in wcz.records}
    for name in sd:
        smaller = min(("huffman", "ans"), key=lambda e: sizes[e][name][0])
        assert sizes[None][name] == sizes[smaller][name]
    assert {sizes[None][name][1] for name in sd} == {"ans"}  # dense 16-cluster codes: fractional bits win
