"""A recipe example with retraining on a real model: all-MiniLM-L6-v2, distilled toward itself on unlabeled text.

``build()`` loads the pretrained sentence encoder (offline, :mod:`weightcodec.pipelines.pretrained`),
``retrain(model, stage)`` is the training hook named in ``minilm_distill.toml``. Run it with::

    cd examples
    weightcodec compress --recipe minilm_distill.toml minilm_distill:build -o minilm.wcz
    weightcodec inspect minilm.wcz

No labels are needed: the original model is the teacher. It is loaded once, a second copy of the
same weights, frozen, and the compressed model (the student) learns to give the same outputs on
the same sentences: the loss is ``1 - cosine`` between the student's and the teacher's sentence
embeddings (masked mean of the last hidden states, L2-normalised: what the model is used for)
plus ``1 - cosine`` between their last hidden states token by token, which gives many more
targets per sentence than the one embedding. Every trainable parameter learns: after pruning
the surviving weights, after clustering the shared values (one centroid per cluster and layer,
Deep Compression style), and in both stages the biases and LayerNorms, which the recipe stores
raw, so their change costs no byte. The pooler is frozen while the hook trains: the sentence
embedding never reads it, so it gets no gradient (DistributedDataParallel requires every
trained parameter to get one).

The unlabeled text is the prose of the Python language reference that ships with CPython as
``pydoc_data.topics`` (the text ``help("if")`` prints): real English, offline, and the same for a
given Python. The evaluation sentences of ``benchmarks/bench_real_model.py`` are docstrings of the
standard library, which leaves ``pydoc_data`` out, and :func:`training_sentences` drops any
sentence that is also in ``benchmarks/data/sentences.txt``, so no evaluation sentence is trained
on. Batches come in a fixed, seeded order and the model stays in eval mode (no dropout): runs
with the same settings give the same losses, step for step.

The recipe (20.8x) and the learning rates were chosen on short pilot runs (15 + 15 steps) scored
on standard-library sentences that are not evaluation sentences; the step counts fit about 15
CPU minutes. ``benchmarks/bench_distill.py`` measures the result: on the 320 evaluation
sentences the mean cosine to the original's embeddings goes from 0.31 without the hook to 0.79
with it (``benchmarks/results/distill-minilm.md``).

Under ``torchrun --nproc_per_node N -m weightcodec compress ...`` each process takes its share
of each batch (``weightcodec.distributed.shard``) and ``weightcodec.distributed.data_parallel``
averages the gradients, as in ``tiny_model.py`` (whose hook the tests run under torchrun; this
one has only been run in a single process so far). The batches go to the model's device
(``--device``). Needs ``transformers`` (``pip install 'weightcodec[bench]'``).
"""

import functools
import logging
import re
from pathlib import Path

import pydoc_data.topics
import torch
from torch import nn

from weightcodec import distributed
from weightcodec.pipelines.pretrained import load_minilm, mean_pool, tokenize

TRAIN_STEPS = {"pruned": 200, "clustered": 400}
LEARNING_RATE = {"pruned": 3e-4, "clustered": 1e-3}  # Adam; the shared values need the larger steps
BATCH_SIZE = 16
SEED = 0
EVALUATION_SENTENCES = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "sentences.txt"
# A training sentence: prose of 40 to 200 characters, 6 words or more, capitalised, ending in a full stop.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
CHARACTERS, MIN_WORDS = (40, 200), 6
CODE_INDENT = "   "  # the reference's code examples are indented paragraphs: not prose

log = logging.getLogger(__name__)


def build() -> nn.Module:
    """The pretrained all-MiniLM-L6-v2 (a transformers BertModel, eval mode, float32)."""
    model, _ = load_minilm()
    return model


@functools.cache
def teacher() -> tuple[nn.Module, object]:
    """The original model, frozen, and its tokenizer: loaded once, whatever the student has become."""
    model, tokenizer = load_minilm()
    model.requires_grad_(False)
    return model, tokenizer


@functools.cache
def training_sentences(exclude: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The unlabeled text: the prose sentences of ``pydoc_data.topics``, deduplicated, in a seeded order.

    Parameters
    ----------
    exclude : frozenset of str
        Sentences never to train on (the evaluation sentences).
    """
    found, seen = [], {sentence.lower() for sentence in exclude}
    for topic in sorted(pydoc_data.topics.topics):
        for paragraph in pydoc_data.topics.topics[topic].split("\n\n"):
            if any(line.startswith(CODE_INDENT) for line in paragraph.splitlines()):
                continue
            for sentence in SENTENCE_END.split(" ".join(paragraph.split())):
                if _is_prose(sentence) and sentence.lower() not in seen:
                    seen.add(sentence.lower())
                    found.append(sentence)
    order = torch.randperm(len(found), generator=torch.Generator().manual_seed(SEED))
    return tuple(found[i] for i in order.tolist())


def _is_prose(sentence: str) -> bool:
    return (CHARACTERS[0] <= len(sentence) <= CHARACTERS[1] and len(sentence.split()) >= MIN_WORDS
            and sentence[0].isupper() and sentence.endswith("."))


def distillation_loss(student: nn.Module, teacher_model: nn.Module, batch) -> torch.Tensor:
    """``1 - cos`` of the sentence embeddings plus ``1 - cos`` of the last hidden states over the real tokens."""
    hidden = student(**batch).last_hidden_state
    with torch.no_grad():
        target = teacher_model(**batch).last_hidden_state
    mask = batch["attention_mask"]
    sentences = 1 - (mean_pool(hidden, mask) * mean_pool(target, mask)).sum(dim=1)
    tokens = 1 - nn.functional.cosine_similarity(hidden, target, dim=-1)[mask.bool()]
    return sentences.mean() + tokens.mean()


def distil(model: nn.Module, steps: int, learning_rate: float, sentences: tuple[str, ...]) -> list[float]:
    """Adam on the distillation loss, one fixed batch of ``sentences`` per step (this process's share of it).

    The learning rate decays linearly from ``learning_rate`` to 0 over the ``steps``.

    Returns
    -------
    list of float
        The loss before each step (this process's share of the batch).
    """
    teacher_model, tokenizer = teacher()
    device = next(model.parameters()).device
    teacher_model.to(device)
    net = distributed.data_parallel(model)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1 - step / steps)  # linear decay to 0
    losses = []
    for step in range(steps):
        start = step * BATCH_SIZE % len(sentences)
        batch_sentences = sentences[start : start + BATCH_SIZE]
        mine = distributed.shard(torch.arange(len(batch_sentences)))
        batch = tokenize(tokenizer, [batch_sentences[i] for i in mine.tolist()]).to(device)
        optimiser.zero_grad()
        loss = distillation_loss(net, teacher_model, batch)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def retrain(model: nn.Module, stage: str) -> list[float]:
    """The training hook named in minilm_distill.toml: distil toward the original after each simplification step."""
    torch.manual_seed(SEED)
    pooler = [p for p in model.pooler.parameters() if p.requires_grad] if model.pooler is not None else []
    for param in pooler:
        param.requires_grad_(False)
    try:
        losses = distil(model, TRAIN_STEPS[stage], LEARNING_RATE[stage], training_sentences(evaluation_sentences()))
    finally:
        for param in pooler:
            param.requires_grad_(True)
    if losses:
        log.info("%s: distillation loss %.4f at the first step, %.4f at the last (%d steps)", stage, losses[0], losses[-1], len(losses))
    return losses


def evaluation_sentences() -> frozenset[str]:
    """The benchmark's evaluation sentences (``benchmarks/data/sentences.txt``), if this is a clone that has them."""
    if not EVALUATION_SENTENCES.is_file():
        return frozenset()
    lines = EVALUATION_SENTENCES.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line.strip() and not line.startswith("#"))
