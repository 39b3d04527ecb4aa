import pytest
import torch
from torch import nn

from atlas.errors import UserError
from training.pruning import linear_weights, magnitude_masks, prune_linear, sparsity_of


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(50, 30), nn.ReLU(), nn.Linear(30, 10))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.85, 0.95])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_to_s_leaves_exactly_s_of_the_weights_zero(sparsity, scope):
    model = _model()
    prune_linear(model, sparsity, scope)
    weights = linear_weights(model)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    if scope == "global":
        assert zeros == round(sparsity * total)
    else:
        assert all(int((w == 0).sum()) == round(sparsity * w.numel()) for w in weights.values())
    assert sparsity_of(weights) == pytest.approx(sparsity, abs=1 / total)


def test_the_smallest_magnitudes_go_first():
    w = {"a": torch.tensor([[0.5, -0.1], [2.0, 0.05]])}
    masks = magnitude_masks(w, 0.5)
    assert masks["a"].tolist() == [[True, False], [True, False]]


def test_masks_keep_pruned_weights_zero_through_training():
    model = _model()
    keep_pruned = prune_linear(model, 0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 50)).sum().backward()
        opt.step()
        keep_pruned(model)
    assert sparsity_of(linear_weights(model)) == pytest.approx(0.9, abs=1e-3)


def test_bad_sparsity_is_refused():
    with pytest.raises(UserError, match=r"sparsity must be in \[0, 1\)"):
        prune_linear(_model(), 1.0)
