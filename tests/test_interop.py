"""What a user of a real checkpoint expects: dtypes kept, integer buffers exact, tied weights stored once,
and a decoded ``model.safetensors`` that ``transformers`` loads."""

import json
import shutil

import pytest
import torch
from torch import nn

import weightcodec
from weightcodec import container, state_files, tensors
from weightcodec.codecs import alias

DEEP = {"rule": [{"match": "*", "method": "deep", "clusters": 16}]}


class TiedLanguageModel(nn.Module):
    """An embedding whose matrix is also the output projection (tied weights), and an integer buffer."""

    def __init__(self, vocab: int = 50, width: int = 12):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("position_ids", torch.arange(vocab, dtype=torch.int64)[None])

    def forward(self, tokens):
        return self.head(torch.relu(self.hidden(self.embed(tokens))))


def test_integer_buffers_are_stored_exactly_in_their_dtype():
    torch.manual_seed(0)
    state = {
        "w": torch.randn(20, 10),
        "position_ids": torch.arange(512, dtype=torch.int64)[None] * 2**40,
        "counts": torch.randint(-(2**31), 2**31 - 1, (7,), dtype=torch.int32),
        "codes": torch.randint(0, 255, (3, 4), dtype=torch.uint8),
        "mask": torch.rand(5) > 0.5,
    }
    decoded = weightcodec.load_bytes(weightcodec.compress(state, DEEP))
    for name in ("position_ids", "counts", "codes", "mask"):
        assert decoded[name].dtype == state[name].dtype and torch.equal(decoded[name], state[name]), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_comes_back_in_its_dtype(dtype):
    torch.manual_seed(0)
    model = TiedLanguageModel().to(dtype)
    state = model.state_dict()
    decoded = weightcodec.load_bytes(weightcodec.compress(state, DEEP))
    assert {name: t.dtype for name, t in decoded.items()} == {name: t.dtype for name, t in state.items()}
    assert torch.unique(decoded["hidden.weight"]).numel() <= 16  # compressed, not stored raw


def test_tied_weights_are_stored_once_and_come_back_tied(tmp_path):
    torch.manual_seed(0)
    model = TiedLanguageModel(vocab=400, width=32)
    path = tmp_path / "tied.wcz"
    weightcodec.compress(model, DEEP, path)
    wcz = container.read(path)
    assert wcz.record("head.weight").encoded == alias.encode("embed.weight")
    untied = {name: t.clone() for name, t in model.state_dict().items()}
    saved = len(weightcodec.compress(untied, DEEP)) - path.stat().st_size
    assert saved > 0.9 * wcz.record("embed.weight").nbytes  # the 400x32 matrix once, not twice (headers differ a little)

    decoded = weightcodec.load(path)
    assert decoded["head.weight"] is decoded["embed.weight"]
    assert torch.equal(decoded["embed.weight"], model.embed.weight.detach())  # the tie held while clustering
    restored = TiedLanguageModel(vocab=400, width=32)
    weightcodec.load_into(restored, path)
    tokens = torch.randint(0, 400, (3, 5))
    assert torch.equal(restored(tokens), model(tokens))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_decoded_tied_weights_save_as_a_state_dict_file(tmp_path, suffix):
    model = TiedLanguageModel()
    decoded = weightcodec.load_bytes(weightcodec.compress(model, DEEP))
    target = tmp_path / f"restored{suffix}"
    state_files.save_state_dict(decoded, target)
    again = state_files.load_state_dict(target)
    assert sorted(again) == sorted(decoded)
    assert all(torch.equal(again[name], decoded[name]) for name in decoded)


def test_a_file_with_an_alias_names_it_in_inspect(tmp_path):
    from weightcodec import report

    path = tmp_path / "tied.wcz"
    weightcodec.compress(TiedLanguageModel(), DEEP, path)
    rows = {row["name"]: row for row in report.summarize(container.read(path))["tensors"]}
    assert rows["head.weight"]["codec"] == "alias" and rows["head.weight"]["bytes"] == 0
    assert rows["head.weight"]["describe"]["target"] == "embed.weight"


def test_decoded_safetensors_loads_with_transformers_from_pretrained(tmp_path, transformers):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40,
    )
    model = transformers.BertForMaskedLM(config).eval()
    original = tmp_path / "original"
    model.save_pretrained(original)
    # the model's own state_dict: its output projection is tied to the word embeddings; and, as
    # older checkpoints (all-MiniLM-L6-v2's among them) do, the int64 position_ids
    state = {**model.state_dict(), "bert.embeddings.position_ids": torch.arange(40, dtype=torch.int64)[None]}
    assert tensors.shared_aliases(state) == {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    encoded = tmp_path / "model.wcz"
    weightcodec.compress(state, DEEP, encoded)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    decoded = weightcodec.load(encoded)
    state_files.save_state_dict(decoded, copy / "model.safetensors")

    loaded = transformers.BertForMaskedLM.from_pretrained(copy, local_files_only=True).eval()
    loaded_state = loaded.state_dict()
    for name, tensor in decoded.items():
        if name in loaded_state:
            assert torch.equal(loaded_state[name], tensor), name
    assert torch.unique(loaded_state["bert.encoder.layer.0.intermediate.dense.weight"]).numel() <= 16
    tokens = torch.randint(0, 96, (2, 7))
    reference = transformers.BertForMaskedLM(config).eval()
    reference.load_state_dict({k: v for k, v in decoded.items() if k in reference.state_dict()})
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, reference(tokens).logits)
    assert json.loads((copy / "config.json").read_text())["vocab_size"] == 96
