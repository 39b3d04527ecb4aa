"""Network slimming (Liu et al. 2017): L1 on BatchNorm scale factors while training, then remove the channels
whose factors fall under one global threshold, then fine-tune.

Unlike zeroed weights, removed channels make the exported ONNX physically smaller and faster on the NPU: the
pruned model is the same architecture with smaller widths (the arch dict says which), so export, ATC and the
board take it like any other checkpoint.

Surgery removes, for each pruned conv, its output channels, the matching BatchNorm entries, and the matching
input channels of the next conv, or the matching channel-major blocks of H*W input features of the first
Linear after the Flatten. What "same outputs" means exactly: a removed channel whose BN scale (gamma) is 0
outputs the constant beta before ReLU; if beta <= 0 as well, it outputs exactly 0 after ReLU and removing it
changes nothing (up to float summation order). A channel with gamma = 0 and beta > 0 feeds a constant into
the next layer, which the fine-tuning absorbs; we do not fold it into the next layer's bias because zero
padding makes that constant's effect position-dependent at the borders.

Models: PlainCNN students and teachers (`tinycnn`, `cnn`: BN after every conv, one global threshold on |gamma|
normalised by its layer's mean, no layer below MIN_KEEP of its width) and
LeNet-5 (no BN: each conv loses the same fraction of its filters, those of smallest L1 norm, Li et al. 2017).
Residual networks are refused: a shortcut adds channels across blocks, so their widths cannot change alone.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from atlas.errors import UserError
from training.channel_blocks import blocks
from training.models import LeNet5, PlainCNN, ResNet, build_model

MIN_KEEP = 0.25  # every layer keeps at least this fraction of its channels (and at least one)


def bn_l1_penalty(strength: float):
    """`extra_loss` for training.distill.fit: strength * sum of |gamma| over every BatchNorm2d."""
    def penalty(model: nn.Module) -> torch.Tensor:
        terms = [m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        return strength * torch.stack(terms).sum() if terms else torch.zeros(())
    return penalty


def _conv_units(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """The convs of `model.features` in order, each with the BatchNorm right after it (or None)."""
    layers = list(model.features)
    units = []
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            bn = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d) else None
            units.append((layer, bn))
    return units


def _check_prunable(model: nn.Module, arch: dict) -> None:
    if isinstance(model, ResNet):
        raise UserError(f"'{arch['name']}' has residual blocks: their shortcuts add channels across blocks, so "
                        "channel pruning is refused for it; prune a plain student (tinycnn, lenet5) instead")
    if not isinstance(model, (PlainCNN, LeNet5)):
        raise UserError(f"'{arch['name']}' has no conv channels to remove (channel pruning needs tinycnn, cnn "
                        "or lenet5); for its fully-connected weights use --channels 0 --fc-sparsity FRACTION")


def select_channels(model: nn.Module, arch: dict, fraction: float, align: int = 1) -> list[torch.Tensor]:
    """Sorted indices of the channels each conv keeps when `fraction` of all conv channels go.

    align > 1 then moves each layer's kept count to the nearest multiple of `align` or to its full width
    (training.channel_blocks: thinning a layer within one 16-channel block saves the NPU nothing), keeping the
    best-scored channels; the fraction actually removed then differs from `fraction`.
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"the fraction of channels to remove must be in (0, 1), got {fraction}")
    if align < 1:
        raise UserError(f"--align must be a whole number of channels >= 1, got {align}")
    _check_prunable(model, arch)
    units = _conv_units(model)
    if all(bn is not None for _, bn in units):
        # |gamma| divided by its layer's mean: without the L1 term, scale factors differ in size from layer to
        # layer, and one raw global threshold emptied whole early layers (measured: tinycnn on MNIST kept
        # widths [1, 1, 28] of [8, 16, 32]). Within a layer the order is still that of |gamma|.
        scores = [s / s.mean().clamp_min(1e-12) for s in (_scores(conv, bn) for conv, bn in units)]
        everything = torch.cat(scores)
        n_remove = int(round(fraction * everything.numel()))
        # the global threshold: the n_remove-th smallest score; ties broken by position for an exact count
        order = everything.argsort(stable=True)
        removed = torch.zeros_like(everything, dtype=torch.bool)
        removed[order[:n_remove]] = True
        keep, offset = [], 0
        for s in scores:
            mask = ~removed[offset:offset + len(s)]
            offset += len(s)
            floor = max(1, math.ceil(MIN_KEEP * len(s)))  # guard: no layer is thinned below this
            if int(mask.sum()) < floor:
                mask[s.argsort(descending=True, stable=True)[:floor]] = True
            keep.append(mask.nonzero().flatten())
    else:
        scores, keep = [], []
        for conv, _ in units:
            scores.append(_scores(conv, None))
            n_keep = max(1, conv.out_channels - int(round(fraction * conv.out_channels)))
            keep.append(scores[-1].argsort(descending=True, stable=True)[:n_keep].sort().values)
    if align > 1:
        floor = MIN_KEEP if all(bn is not None for _, bn in units) else 0.0
        keep = [s.argsort(descending=True, stable=True)[:_aligned(len(k), len(s), align, floor)].sort().values
                for k, s in zip(keep, scores)]
    return keep


def select_widths(model: nn.Module, arch: dict, widths: list[int]) -> list[torch.Tensor]:
    """Sorted indices of the channels each conv keeps when the kept widths are given, layer by layer (e.g. an
    allocation measured fast on the target with scripts/bench_widths.py --keep): the best-scored channels of
    each layer, scored as select_channels does (|gamma| with BN, else the filter's L1 norm)."""
    _check_prunable(model, arch)
    units = _conv_units(model)
    have = [conv.out_channels for conv, _ in units]
    if len(widths) != len(have):
        raise UserError(f"--widths: {arch['name']} has {len(have)} conv layers ({have}); give {len(have)} widths, "
                        f"got {len(widths)} ({list(widths)})")
    for i, (w, n) in enumerate(zip(widths, have)):
        if not 1 <= w <= n:
            raise UserError(f"--widths: conv {i + 1} has {n} channels; keep between 1 and {n} of them, got {w}")
    return [_scores(conv, bn).argsort(descending=True, stable=True)[:w].sort().values
            for (conv, bn), w in zip(units, widths)]


def _scores(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> torch.Tensor:
    """How much each output channel matters within its layer: |gamma| after a BN, else the filter's L1 norm."""
    if bn is not None:
        return bn.weight.detach().abs()
    return conv.weight.detach().abs().sum(dim=(1, 2, 3))


def _aligned(n: int, width: int, align: int, floor: float = 0.0) -> int:
    """The multiple of `align` below `width` and not under floor * width, or `width` itself, nearest to n
    (ties go to the larger)."""
    choices = [c for c in range(align, width, align) if c >= math.ceil(floor * width)] + [width]
    return min(choices, key=lambda c: (abs(c - n), -c))


def _pruned_arch(arch: dict, model: nn.Module, widths: list[int]) -> dict:
    new = copy.deepcopy(arch)
    if isinstance(model, PlainCNN):
        it = iter(widths)
        new["kwargs"]["stages"] = [[next(it) for _ in stage] for stage in arch["kwargs"]["stages"]]
    else:
        new["kwargs"]["channels"] = list(widths)
    return new


@torch.no_grad()
def prune_channels(model: nn.Module, arch: dict, fraction: float, align: int = 1,
                   widths: list[int] | None = None) -> tuple[nn.Module, dict, list[torch.Tensor]]:
    """A new, smaller model with `fraction` of the conv channels removed (or with these kept `widths`), its
    arch dict, and the kept channel indices per conv."""
    keep = select_widths(model, arch, widths) if widths else select_channels(model, arch, fraction, align)
    new_arch = _pruned_arch(arch, model, [len(k) for k in keep])
    pruned = build_model(new_arch)
    old_units, new_units = _conv_units(model), _conv_units(pruned)
    previous = None  # input channels kept by the layer before
    for (old_conv, old_bn), (new_conv, new_bn), k in zip(old_units, new_units, keep):
        weight = old_conv.weight[k]
        new_conv.weight.copy_(weight if previous is None else weight[:, previous])
        if old_conv.bias is not None:
            new_conv.bias.copy_(old_conv.bias[k])
        if old_bn is not None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new_bn, name).copy_(getattr(old_bn, name)[k])
            new_bn.num_batches_tracked.copy_(old_bn.num_batches_tracked)
        previous = k
    old_linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    new_linears = [m for m in pruned.classifier if isinstance(m, nn.Linear)]
    channels_before = old_units[-1][0].out_channels
    area = old_linears[0].in_features // channels_before  # H*W of the last feature map
    columns = (previous[:, None] * area + torch.arange(area)).flatten()  # channel-major blocks of H*W
    new_linears[0].weight.copy_(old_linears[0].weight[:, columns])
    new_linears[0].bias.copy_(old_linears[0].bias)
    for old, new in zip(old_linears[1:], new_linears[1:]):
        new.load_state_dict(old.state_dict())
    return pruned.eval(), new_arch, keep


def count_macs(model: nn.Module, input_shape: tuple[int, ...], c0: int = 1) -> int:
    """Multiply-accumulates of one forward pass for one image (Conv2d and Linear).

    With c0 > 1, conv channels and Linear features count as rounded up to a multiple of c0: the work of
    hardware that computes in blocks of c0 channels (training.channel_blocks; the Ascend 310's Cube uses 16).
    Not rounded: the batch, and the image's own channels or pixels at the first layer (ATC has a separate
    small-channel layout for those, `--enable_small_channel`, which this estimate does not model). Grouped
    and depthwise convs are counted as if each group filled whole blocks, an over-estimate (no model here has
    them).
    """
    total = 0
    first = True  # the next layer hooked is the one that reads the image

    def up(n: int) -> int:
        return blocks(n, c0) * c0

    def conv_hook(m, _, out):
        nonlocal total, first
        cin = m.in_channels // m.groups if first else up(m.in_channels // m.groups)
        first = False
        total += out.shape[2] * out.shape[3] * up(m.out_channels) * cin * math.prod(m.kernel_size)

    def linear_hook(m, _, out):
        nonlocal total, first
        total += (m.in_features if first else up(m.in_features)) * up(m.out_features)
        first = False

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total
