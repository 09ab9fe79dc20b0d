"""The two networks of the papers: LeNet-300-100 and LeNet-5 in its Caffe form.

Both take MNIST images flattened to 784 pixels (``(n, 784)``, as :mod:`.data` gives them) or
as ``(n, 1, 28, 28)``, and return 10 logits. Layer names follow the order of Han's tables
(``ip1, ip2, ip3`` there are ``fc1, fc2, fc3`` here; ``conv1, conv2, ip1, ip2`` of LeNet-5 are
``conv1, conv2, fc1, fc2``).

==============  ==========================================================  ===========
model           layers                                                      parameters
==============  ==========================================================  ===========
``lenet300``    784 -> 300 -> 100 -> 10, ReLU                                   266,610
``lenet5``      conv 20@5x5, maxpool 2, conv 50@5x5, maxpool 2,                 431,080
                fc 800 -> 500, ReLU, fc 500 -> 10
==============  ==========================================================  ===========
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import WeightcodecError

__all__ = ["LeNet300", "LeNet5", "MODELS", "build_model", "count_parameters"]

IMAGE_SIDE = 28
CLASSES = 10


class LeNet300(nn.Module):
    """LeNet-300-100: a 784-300-100-10 perceptron with ReLU (266,610 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IMAGE_SIDE * IMAGE_SIDE, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), -1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's ``lenet_train_test.prototxt`` (431,080 parameters).

    No activation after the convolutions, as in Caffe; one ReLU between the two FC layers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), 1, IMAGE_SIDE, IMAGE_SIDE)
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


MODELS: dict[str, Callable[[], nn.Module]] = {"lenet300": LeNet300, "lenet5": LeNet5}


def build_model(name: str, *, seed: int = 0) -> nn.Module:
    """A freshly initialised model from :data:`MODELS`, its initial weights fixed by ``seed``.

    Raises
    ------
    WeightcodecError
        If ``name`` is unknown; the message lists the known models.

    Examples
    --------
    >>> count_parameters(build_model("lenet300"))
    266610
    """
    if name not in MODELS:
        raise WeightcodecError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name]()


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (weights and biases) of ``model``."""
    return sum(p.numel() for p in model.parameters())
