import copy

import pytest
import torch

from atlas.errors import UserError
from training.models import build_model, count_parameters, make_arch
from training.slimming import _conv_units, bn_l1_penalty, count_macs, prune_channels, select_channels, select_widths


def _trained_like(name, shape=(1, 28, 28), **kw):
    torch.manual_seed(0)
    model = build_model(make_arch(name, shape, 10, **kw)).eval()
    units = _conv_units(model) if hasattr(model, "features") else []
    with torch.no_grad():  # BN statistics and scales that are not the defaults, like a trained net
        for _, bn in units:
            if bn is not None:
                bn.weight.uniform_(0.2, 1.5)
                bn.bias.uniform_(-0.3, 0.3)
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
    return model, make_arch(name, shape, 10, **kw)


@pytest.mark.parametrize("name", ["tinycnn", "cnn"])
def test_removing_channels_whose_bn_output_is_exactly_zero_keeps_outputs_identical(name):
    # gamma = 0 makes a channel's BN output the constant beta; beta <= 0 makes it exactly 0 after ReLU.
    model, arch = _trained_like(name)
    with torch.no_grad():
        for _, bn in _conv_units(model):
            dead = torch.arange(0, bn.num_features, 2)
            bn.weight[dead] = 0.0
            bn.bias[dead] = -torch.rand(len(dead))
    pruned, new_arch, keep = prune_channels(model, arch, 0.5)
    assert [len(k) for k in keep] == [u[0].out_channels // 2 for u in _conv_units(model)]
    assert all(torch.equal(k, torch.arange(1, len(k) * 2, 2)) for k in keep)  # exactly the dead ones went
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=1e-5)
    assert count_parameters(pruned) < count_parameters(model)


def test_bn_scale_zero_with_positive_shift_is_not_silently_called_identical():
    model, arch = _trained_like("tinycnn")
    with torch.no_grad():
        for _, bn in _conv_units(model):
            bn.weight[::2] = 0.0
            bn.bias[::2] = 0.5  # a constant 0.5 after ReLU: removing it changes the next layer's input
    pruned, _, _ = prune_channels(model, arch, 0.5)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert (pruned(x) - model(x)).abs().max() > 1e-3


def test_global_threshold_removes_the_fraction_with_a_floor_per_layer():
    model, arch = _trained_like("tinycnn")
    with torch.no_grad():
        _conv_units(model)[0][1].weight.fill_(1e-3)  # first layer: all tiny, after normalisation still equal
    keep = select_channels(model, arch, 0.5)
    total = sum(u[0].out_channels for u in _conv_units(model))
    assert sum(len(k) for k in keep) >= total - round(0.5 * total)
    assert all(len(k) >= 2 for k in keep)  # 25 % floor of 8 channels


def test_pruned_checkpoint_arch_rebuilds_the_same_network():
    model, arch = _trained_like("tinycnn")
    pruned, new_arch, _ = prune_channels(model, arch, 0.5)
    rebuilt = build_model(new_arch)
    rebuilt.load_state_dict(pruned.state_dict())  # strict: same shapes everywhere
    assert new_arch["name"] == "tinycnn" and new_arch["kwargs"]["stages"] != arch["kwargs"]["stages"]


def test_lenet5_without_bn_loses_half_its_filters_by_l1_norm():
    model, arch = _trained_like("lenet5")
    pruned, new_arch, keep = prune_channels(model, arch, 0.5)
    assert new_arch["kwargs"]["channels"] == [3, 8]
    norms = model.features[0].weight.abs().sum(dim=(1, 2, 3))
    assert set(keep[0].tolist()) == set(norms.argsort(descending=True)[:3].tolist())
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert count_macs(pruned, (1, 28, 28)) < count_macs(model, (1, 28, 28))


def test_given_widths_keep_the_best_scored_channels_of_each_layer():
    model, arch = _trained_like("tinycnn")
    keep = select_widths(model, arch, [2, 16, 10])
    assert [len(k) for k in keep] == [2, 16, 10]
    for k, (_, bn) in zip(keep, _conv_units(model)):
        assert set(k.tolist()) == set(bn.weight.abs().argsort(descending=True)[:len(k)].tolist())
    pruned, new_arch, _ = prune_channels(model, arch, 0.0, widths=[2, 16, 10])
    assert new_arch["kwargs"]["stages"] == [[2], [16], [10]] and pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    model, arch = _trained_like("lenet5")  # no BN: the filters' L1 norms
    keep = select_widths(model, arch, [2, 9])
    norms = model.features[0].weight.abs().sum(dim=(1, 2, 3))
    assert set(keep[0].tolist()) == set(norms.argsort(descending=True)[:2].tolist()) and len(keep[1]) == 9


@pytest.mark.parametrize("widths, message", [([2, 16], "has 3 conv layers"), ([2, 17, 10], "conv 2 has 16 channels"),
                                             ([0, 16, 10], "keep between 1 and 8")])
def test_given_widths_that_do_not_fit_the_model_are_refused(widths, message):
    model, arch = _trained_like("tinycnn")
    with pytest.raises(UserError, match=message):
        select_widths(model, arch, widths)


def test_residual_and_fully_connected_models_are_refused_clearly():
    model, arch = _trained_like("resnet20", shape=(3, 32, 32))
    with pytest.raises(UserError, match="residual blocks"):
        prune_channels(model, arch, 0.5)
    model, arch = _trained_like("mlp50")
    with pytest.raises(UserError, match="no conv channels"):
        prune_channels(model, arch, 0.5)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_fraction_outside_zero_one_is_refused(fraction):
    model, arch = _trained_like("tinycnn")
    with pytest.raises(UserError, match=r"in \(0, 1\)"):
        prune_channels(model, arch, fraction)


def test_l1_penalty_is_the_sum_of_bn_scales():
    model, _ = _trained_like("tinycnn")
    expected = sum(bn.weight.abs().sum() for _, bn in _conv_units(model))
    assert bn_l1_penalty(1e-3)(model).item() == pytest.approx(1e-3 * expected.item())


def test_macs_of_a_known_layer():
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 28 * 28, 10))
    assert count_macs(conv, (1, 28, 28)) == 4 * 28 * 28 * 9 + 4 * 28 * 28 * 10


def test_macs_in_channel_blocks_round_every_width_but_the_image_channels():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 20, 3, padding=1),
                              torch.nn.Flatten(), torch.nn.Linear(20 * 28 * 28, 10))
    plain = 28 * 28 * (4 * 1 * 9 + 20 * 4 * 9) + 20 * 28 * 28 * 10
    assert count_macs(net, (1, 28, 28)) == plain
    # first conv: 4 -> 16 outputs, its single input channel as is; second: 4 -> 16 in, 20 -> 32 out; Linear 10 -> 16
    assert count_macs(net, (1, 28, 28), c0=16) == 28 * 28 * (16 * 1 * 9 + 32 * 16 * 9) + 20 * 28 * 28 * 16


@pytest.mark.parametrize("name, align, expected", [
    ("tinycnn", 16, None),  # every width a multiple of 16 or the layer's full width
    ("cnn", 16, None),
    ("lenet5", 4, [4, 8]),  # 6 -> 3 rounds to 4 (choices 4, 6); 16 -> 8 stays
    ("lenet5", 16, [6, 16]),  # nothing under one block is worth thinning: untouched
])
def test_align_rounds_each_layer_to_whole_blocks_keeping_the_best_channels(name, align, expected):
    model, arch = _trained_like(name)
    widths = [u[0].out_channels for u in _conv_units(model)]
    keep = select_channels(model, arch, 0.5, align=align)
    kept = [len(k) for k in keep]
    assert all(n == w or n % align == 0 for n, w in zip(kept, widths)), kept
    if expected:
        assert kept == expected
    else:
        assert sum(kept) < sum(widths)
    for k, (conv, bn) in zip(keep, _conv_units(model)):  # each layer keeps its best-scored channels
        score = (bn.weight.abs() if bn is not None else conv.weight.abs().sum(dim=(1, 2, 3))).detach()
        removed = [i for i in range(len(score)) if i not in k.tolist()]
        if removed:
            assert score[k].min() >= score[removed].max()


def test_align_below_one_is_refused():
    model, arch = _trained_like("tinycnn")
    with pytest.raises(UserError, match="--align"):
        select_channels(model, arch, 0.5, align=0)


def test_block_summary_names_the_layers_thinned_within_one_block():
    from training.channel_blocks import block_summary, describe

    before = build_model(make_arch("tinycnn", (1, 28, 28), 10))
    after = build_model(make_arch("tinycnn", (1, 28, 28), 10, stages=[[3], [9], [16]]))
    summary = block_summary(before, after)
    assert [layer["blocks"] for layer in summary["layers"]] == [[1, 1], [1, 1], [2, 1]]
    assert summary["unchanged"] == [1, 2]
    assert "conv 1 8->3, conv 2 16->9 still fill the same blocks" in describe(summary)
    assert block_summary(before, before)["unchanged"] == []  # nothing thinned, nothing to warn about


def test_align_never_thins_a_layer_below_its_floor():
    model, arch = _trained_like("tinycnn", stages=[[200], [16]])
    unaligned = [len(k) for k in select_channels(model, arch, 0.9)]
    aligned = [len(k) for k in select_channels(model, arch, 0.9, align=16)]
    assert unaligned[0] == 50  # the 25 % floor of 200
    assert aligned[0] >= 50 and aligned[0] % 16 == 0  # 64, not 48


def test_block_macs_leave_an_mlps_image_pixels_unrounded():
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(75, 20), torch.nn.Linear(20, 10))
    assert count_macs(mlp, (3, 5, 5), c0=16) == 75 * 32 + 32 * 16
