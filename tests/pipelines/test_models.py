"""The LeNets: parameter counts of the papers, output shapes, the registry."""

import pytest
import torch

from weightcodec.errors import WeightcodecError
from weightcodec.pipelines.models import MODELS, build_model, count_parameters


@pytest.mark.parametrize("name, params", [("lenet300", 266_610), ("lenet5", 431_080)])
def test_parameter_counts_match_the_papers(name, params):
    assert count_parameters(build_model(name)) == params


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(3, 784), (3, 1, 28, 28)])
def test_logits_for_flat_and_image_input(name, shape):
    assert build_model(name)(torch.zeros(shape)).shape == (3, 10)


def test_seed_fixes_initial_weights():
    a, b, c = build_model("lenet5", seed=1), build_model("lenet5", seed=1), build_model("lenet5", seed=2)
    assert torch.equal(a.fc1.weight, b.fc1.weight) and not torch.equal(a.fc1.weight, c.fc1.weight)


def test_unknown_model_lists_known_ones():
    with pytest.raises(WeightcodecError, match=r"unknown model 'vgg'; choose one of \['lenet300', 'lenet5'\]"):
        build_model("vgg")
