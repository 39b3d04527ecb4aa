"""A user's own model, as a user would write it: a factory that returns an nn.Module."""
from torch import nn


def small_cnn(in_channels: int, num_classes: int, width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 7 * 7, num_classes))


def with_hardsigmoid(in_channels: int, num_classes: int) -> nn.Module:
    """Uses an op beyond our students' (HardSigmoid, in ATC's table) and one the spec is silent on (none here)."""
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.Hardsigmoid(), nn.Flatten(),
                         nn.Linear(4 * 28 * 28, num_classes))


def not_a_module(**kwargs):
    return "a string"
