import pytest
import torch
from torch import nn

from training.pmw_sgd import PMWSGD, rank_factors


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("momentum, nesterov, weight_decay", [(0.0, False, 0.0), (0.9, True, 5e-4), (0.9, False, 1e-3)])
def test_strength_zero_equals_sgd_step_for_step(momentum, nesterov, weight_decay):
    a, b = _model(), _model()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    opt_b = PMWSGD(b.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, strength=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(25):
        x, y = torch.randn(8, 20, generator=g), torch.randint(0, 4, (8,), generator=g)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)


def test_factors_grow_with_rank_and_average_one():
    w = torch.tensor([[0.1, -3.0], [0.5, -0.01]])
    f = rank_factors(w, strength=2.0)
    order = w.abs().flatten().argsort()
    assert torch.all(f.flatten()[order].diff() > 0)  # larger |w|, larger factor
    assert f.mean().item() == pytest.approx(1.0)
    assert f.max().item() / f.min().item() == pytest.approx(3.0)  # 1 + strength


def test_large_weights_move_further_than_with_sgd_and_biases_are_plain():
    a, b = _model(), _model()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = PMWSGD(b.parameters(), lr=0.1, strength=4.0)
    x, y = torch.randn(16, 20), torch.randint(0, 4, (16,))
    for model, opt in ((a, opt_a), (b, opt_b)):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    w0 = _model()[0].weight
    step_sgd, step_pmw = (a[0].weight - w0).abs(), (b[0].weight - w0).abs()
    biggest = w0.abs().flatten().argmax()
    assert step_pmw.flatten()[biggest] > step_sgd.flatten()[biggest]
    assert torch.equal(a[0].bias, b[0].bias)  # 1-D tensors take plain SGD steps


def test_layers_restricts_the_scaling():
    a, b = _model(), _model()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = PMWSGD(b.parameters(), lr=0.1, strength=4.0, layers={b[2].weight})
    x, y = torch.randn(16, 20), torch.randint(0, 4, (16,))
    for model, opt in ((a, opt_a), (b, opt_b)):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[2].weight, b[2].weight)


def test_config_optimizer_pmw_scales_the_linear_weights_only():
    """`student.optimizer = "pmw"` is PMW-SGD at compress.pmw_strength on the FC weights; conv weights, biases
    and BN parameters take the same steps as with "sgd"."""
    from atlas.config import TrainConfig
    from training.distill import make_optimizer

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))

    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    stepped = {}
    for name, strength in (("sgd", 0.0), ("pmw", 3.0), ("pmw", 0.0)):
        model = net()
        opt, _ = make_optimizer(model, TrainConfig(optimizer=name, lr=0.1, momentum=0.9), 1, pmw_strength=strength)
        assert isinstance(opt, PMWSGD) == (name == "pmw")
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        stepped[name, strength] = model
    sgd, pmw, pmw0 = stepped["sgd", 0.0], stepped["pmw", 3.0], stepped["pmw", 0.0]
    assert not torch.equal(sgd[4].weight, pmw[4].weight)  # the FC weight is rank-scaled
    for a, b in ((sgd[0].weight, pmw[0].weight), (sgd[0].bias, pmw[0].bias), (sgd[1].weight, pmw[1].weight),
                 (sgd[4].bias, pmw[4].bias)):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(sgd.parameters(), pmw0.parameters()))  # strength 0: SGD
