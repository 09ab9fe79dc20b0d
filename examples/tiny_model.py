"""A complete weightcodec recipe example: a tiny text classifier, its data and its training hook.

``build()`` makes the model, ``retrain(model, stage)`` is the training hook named in
``recipe.toml``. Run it with::

    cd examples
    weightcodec compress --recipe recipe.toml tiny_model:build -o tiny.wcz
    weightcodec inspect tiny.wcz

or from Python::

    import weightcodec, tiny_model
    model = tiny_model.build()
    weightcodec.compress(model, "recipe.toml", "tiny.wcz")

``recipe_auto.toml`` asks for the automatic search instead: per layer, the smallest file whose
error on ``valid_error`` (held-out sentences) stays within a target::

    weightcodec compress --recipe recipe_auto.toml tiny_model:build -o tiny-auto.wcz

weightcodec calls the hook twice: after pruning (``stage == "pruned"``, the masks are in place)
and after clustering (``stage == "clustered"``, every weight is tied to its layer's shared
values). Any training loop works, because the masks and ties live in the model itself: pruned
weights stay exactly zero and shared weights stay shared. Build the optimiser inside the hook
from ``model.parameters()``: the parameters are not the same objects at the two stages.

The same hook runs under ``torchrun --nproc_per_node N -m weightcodec compress ...``: each
process trains on its shard of the data (``weightcodec.distributed.shard``) through
``weightcodec.distributed.data_parallel`` (DistributedDataParallel, which averages the
gradients), so every process takes the same steps; in a single process both are no-ops. The
data goes to the model's device (``--device``).
"""

import torch
from torch import nn

from weightcodec import distributed

VOCABULARY, WORDS, CLASSES = 500, 12, 4
TRAIN_STEPS = {"pruned": 30, "clustered": 15}
VALID_SENTENCES = 512


class TinyTextClassifier(nn.Module):
    """Mean of word embeddings, then a two-layer MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCABULARY, 32)
        self.hidden = nn.Linear(32, 64)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, CLASSES)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.hidden(self.embed(words).mean(dim=1)))))


def build() -> nn.Module:
    """The model, trained on the synthetic task (deterministic)."""
    torch.manual_seed(0)
    model = TinyTextClassifier()
    train(model, steps=100)
    return model


def data(n: int = 256, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences of random words; the class is the most frequent word's id modulo CLASSES."""
    generator = torch.Generator().manual_seed(seed)
    words = torch.randint(0, VOCABULARY, (n, WORDS), generator=generator)
    labels = words.mode(dim=1).values % CLASSES
    return words, labels


def train(model: nn.Module, steps: int) -> None:
    """Plain full-batch Adam on the synthetic data (this process's shard of it)."""
    words, labels = data()
    mine = distributed.shard(torch.arange(len(words)))
    device = next(model.parameters()).device
    words, labels = words[mine].to(device), labels[mine].to(device)
    net = distributed.data_parallel(model)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(words), labels).backward()
        optimiser.step()


def retrain(model: nn.Module, stage: str) -> None:
    """The training hook named in recipe.toml: retrain a little after each simplification step."""
    torch.manual_seed(2)
    train(model, TRAIN_STEPS[stage])


def valid_error(model: nn.Module) -> float:
    """Percent of held-out sentences misclassified: the evaluation function named in recipe_auto.toml.

    The toy model memorises its 256 training sentences, so held out it is right only a little
    more often than chance (75 % error): about 65 % error. A real model's validation set goes here.
    """
    words, labels = data(n=VALID_SENTENCES, seed=3)
    with torch.no_grad():
        return 100.0 * float((model(words).argmax(dim=1) != labels).float().mean())


def accuracy(model: nn.Module) -> float:
    """Fraction of the synthetic sentences classified right."""
    words, labels = data()
    with torch.no_grad():
        return float((model(words).argmax(dim=1) == labels).float().mean())
