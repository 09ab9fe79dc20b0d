"""The examples' training hooks, run on tiny models built here (no download)."""

import copy
import importlib
from pathlib import Path

import pytest
import torch

import weightcodec
from weightcodec.pipelines.pretrained import sentence_embeddings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
HELD_OUT = [  # not in the training text: the first lines of the benchmark's evaluation sentences
    "Create a class object dynamically using the appropriate metaclass.",
    "Return a bytes object with the contents for a .plist file.",
    "Pack the values into a structure and return the result as bytes.",
    "The default implementation does nothing and may be overridden in subclasses.",
]


@pytest.fixture
def distill(transformers, monkeypatch):
    """examples/minilm_distill.py with a tiny random BERT and a letter-level tokenizer as its teacher, and few steps."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("minilm_distill")
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS, *(f"##{c}" for c in LETTERS), *".,'-"]
    tokenizer = transformers.BertTokenizerFast(vocab={piece: i for i, piece in enumerate(pieces)})
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=256,
    )
    teacher = transformers.BertModel(config).eval().requires_grad_(False)
    monkeypatch.setattr(module, "teacher", lambda: (teacher, tokenizer))
    monkeypatch.setattr(module, "TRAIN_STEPS", {"pruned": 10, "clustered": 10})
    return module


def fidelity(student, distill) -> float:
    """Mean cosine between the student's and the teacher's embeddings of held-out sentences."""
    teacher, tokenizer = distill.teacher()
    with torch.no_grad():
        return float((sentence_embeddings(student, tokenizer, HELD_OUT) * sentence_embeddings(teacher, tokenizer, HELD_OUT)).sum(dim=1).mean())


def test_training_text_is_real_prose_without_the_evaluation_sentences(distill):
    evaluation = distill.evaluation_sentences()
    sentences = distill.training_sentences(evaluation)
    assert len(evaluation) == 320 and len(sentences) > 1000
    assert not evaluation & set(sentences) and len(set(sentences)) == len(sentences)
    assert all(s[0].isupper() and s.endswith(".") and len(s.split()) >= distill.MIN_WORDS for s in sentences)
    assert sentences == distill.training_sentences(evaluation)  # a fixed order


def test_the_hook_moves_a_perturbed_student_toward_the_teacher(distill):
    student = copy.deepcopy(distill.teacher()[0]).requires_grad_(True)
    with torch.no_grad():
        for param in student.parameters():
            param.add_(0.5 * param.std() * torch.randn_like(param))
    before = fidelity(student, distill)
    losses = distill.retrain(student, "pruned")
    assert len(losses) == distill.TRAIN_STEPS["pruned"]
    assert fidelity(student, distill) > before
    assert all(p.requires_grad for p in student.pooler.parameters())  # the pooler is frozen only while training


def test_the_recipe_with_its_hook_beats_the_same_recipe_without(distill, tmp_path):
    recipe = weightcodec.recipe.load_recipe(EXAMPLES / "minilm_distill.toml")
    assert recipe.hook == "minilm_distill:retrain"
    plain, trained = (copy.deepcopy(distill.teacher()[0]).requires_grad_(True) for _ in range(2))
    weightcodec.compress(plain, recipe.__class__(recipe.rules, None, recipe.folder), tmp_path / "plain.wcz")
    weightcodec.compress(trained, recipe, tmp_path / "trained.wcz")
    restored = copy.deepcopy(plain)
    weightcodec.load_into(restored, tmp_path / "trained.wcz")
    hooked, data_free = fidelity(restored, distill), fidelity(plain, distill)
    assert 1 - hooked < 0.7 * (1 - data_free)  # at least 30 % closer to the teacher
