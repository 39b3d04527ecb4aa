import pytest
import torch

from atlas.errors import UserError
from training.models import MODELS, build_model, count_parameters, make_arch, model_names

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("data", list(SHAPES))
def test_every_model_builds_and_maps_images_to_ten_logits(name, data):
    arch = make_arch(name, SHAPES[data], 10)
    model = build_model(arch).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *SHAPES[data]))
    assert out.shape == (2, 10)


def test_tinycnn_is_at_most_10k_parameters_on_mnist():
    assert count_parameters(build_model(make_arch("tinycnn", (1, 28, 28), 10))) <= 10_000


def test_mlp_sizes_are_the_published_ones():
    assert count_parameters(build_model(make_arch("mlp50", (1, 28, 28), 10))) == 784 * 50 + 50 + 50 * 50 + 50 + 50 * 10 + 10
    mlp2000 = build_model(make_arch("mlp2000", (1, 28, 28), 10))
    assert [m.out_features for m in mlp2000.modules() if isinstance(m, torch.nn.Linear)] == [2000, 2000, 10]


def test_arch_dict_rebuilds_smaller_widths():
    arch = make_arch("tinycnn", (1, 28, 28), 10, stages=[[4], [8], [16]])
    assert count_parameters(build_model(arch)) < count_parameters(build_model(make_arch("tinycnn", (1, 28, 28), 10)))


def test_unknown_model_lists_the_zoo():
    with pytest.raises(UserError, match="unknown model 'vgg'.*students: mlp50, lenet5, tinycnn"):
        make_arch("vgg", (1, 28, 28), 10)
    assert set(model_names("student")) == {"mlp50", "lenet5", "tinycnn"}
