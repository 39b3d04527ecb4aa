"""A run's name on a board: a derived run's folder is joined to its parents' names, so that the int8 (or pruned,
locate, split) runs of two runs never share (and overwrite) one folder on a board."""
from __future__ import annotations

from atlas import run_folder as rf


def test_a_plain_run_is_named_by_its_folder(tmp_path):
    assert rf.Run(tmp_path / "mnist").name == "mnist"
    assert rf.Run(tmp_path / "int8-mnist-tinycnn").name == "int8-mnist-tinycnn"  # derived names only as a folder


def test_derived_runs_carry_their_parents_names(tmp_path):
    mnist, cifar = rf.Run(tmp_path / "mnist"), rf.Run(tmp_path / "cifar")
    assert mnist.derived(rf.INT8).name == "mnist-int8" != cifar.derived(rf.INT8).name == "cifar-int8"
    assert mnist.derived(rf.PRUNED).derived(rf.INT8).name == "mnist-pruned-int8"
    assert mnist.derived(rf.LOCATE).derived("bisect-3").name == "mnist-locate-bisect-3"
    assert mnist.derived(rf.SPLIT).derived(rf.SPLIT_A).name == "mnist-split-A"
