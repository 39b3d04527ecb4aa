"""What removing channels can save on the Ascend 310: its Cube unit works on blocks of C0 = 16 channels.

The NPU keeps feature maps in NC1HWC0 ("5HD") form: C is cut into C1 blocks of C0 channels and the last block
is padded up to C0; C0 is the Cube unit's size, 16 for 16- and 32-bit data (CANN aclFormat reference,
ACL_FORMAT_NC1HWC0; Ascend C TransDataTo5HD: C0 = 16 for 16/32-bit types, 32 for 8-bit). So a conv thinned
from 8 to 4 channels still fills one block: its work stays the same and only its parameters shrink. x86
onnxruntime does the same thing with its NCHWc kernels (blocks of 8 channels on AVX2, 16 on AVX-512: its
NchwcTransformer rounds a conv's output channels up to MlasNchwcGetBlockSize(), and blocks pooling only when
the channels are a multiple of it), which is why the CPU latency of students narrower than 16 channels barely
moves when they are pruned (scripts/bench_widths.py measures it).

`count_macs(model, shape, c0=C0)` (training.slimming) gives the matching work estimate (an estimate: it
leaves the image's own channels at the first conv unrounded, since ATC may feed those in a small-channel
layout, and it knows nothing of fusion or memory traffic); this module names the layers whose block count a
pruning left unchanged, so a user sees where pruning paid off and where it did not. `atlas-kd prune --align 16`
keeps whole blocks instead.
"""
from __future__ import annotations

import math

from torch import nn

C0 = 16  # channels per Cube block for float16 / float32 data on the Ascend 310


def blocks(channels: int, c0: int = C0) -> int:
    return math.ceil(channels / c0)


def conv_widths(model: nn.Module) -> list[int]:
    """Output widths of the model's convs, in order."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def block_summary(before: nn.Module, after: nn.Module, c0: int = C0) -> dict:
    """Per conv: width and C0-blocks before and after, and which convs kept their block count."""
    layers = [{"conv": i + 1, "width": [wb, wa], "blocks": [blocks(wb, c0), blocks(wa, c0)]}
              for i, (wb, wa) in enumerate(zip(conv_widths(before), conv_widths(after)))]
    return {"c0": c0, "layers": layers,
            "unchanged": [layer["conv"] for layer in layers
                          if layer["width"][1] < layer["width"][0] and layer["blocks"][0] == layer["blocks"][1]]}


def describe(summary: dict) -> str:
    """One line for the prune report: blocks per conv, and the convs whose thinning saves no NPU work."""
    if not summary["layers"]:
        return "no convs: the Ascend Cube's channel blocks do not apply"
    before = [layer["blocks"][0] for layer in summary["layers"]]
    after = [layer["blocks"][1] for layer in summary["layers"]]
    line = f"{summary['c0']}-channel blocks per conv (Ascend Cube): {before} -> {after}"
    if summary["unchanged"]:
        thinned = ", ".join(f"conv {layer['conv']} {layer['width'][0]}->{layer['width'][1]}"
                            for layer in summary["layers"] if layer["conv"] in summary["unchanged"])
        line += (f"; {thinned} still fill{'s' if len(summary['unchanged']) == 1 else ''} the same blocks, "
                 "so they save parameters but no NPU work")
    return line
