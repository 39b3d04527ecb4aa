"""Every command's short flags keep working, each as an alias of one config field (one channel): the value the
stage reads is the value the flag gave. `--trust-new-host` never reaches the config."""
from __future__ import annotations

import dataclasses

import pytest

from atlas.cli import build_parser
from atlas.config import Config, config_and_run


def config_for(*argv: str) -> Config:
    args = build_parser(argv[0]).parse_args(list(argv))
    return config_and_run(args)[0]


def field(cfg: Config, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("argv, key, expected", [
    (["train", "--teacher", "runs/x/teacher.pt"], "distill.teacher_checkpoint", "runs/x/teacher.pt"),
    (["train", "--dataset", "mnist"], "data.dataset", "mnist"),
    (["train", "--slim", "1e-3"], "compress.slim", 1e-3),
    (["prune", "--channels", "0.3"], "compress.channels", 0.3),
    (["prune", "--epochs", "2"], "compress.finetune_epochs", 2),
    (["prune", "--align", "16"], "compress.align", 16),
    (["prune", "--fc-sparsity", "0.9"], "compress.fc_sparsity", 0.9),
    (["prune", "--fc-scope", "layer"], "compress.fc_scope", "layer"),
    (["prune", "--widths", "2,16,10"], "compress.widths", [2, 16, 10]),
    (["export", "--checkpoint", "a.pt"], "export.checkpoint", "a.pt"),
    (["export", "--onnx", "mine.onnx"], "export.onnx", "mine.onnx"),
    (["export", "--om-aipp", "true"], "om.aipp", True),
    (["om", "--onnx", "mine.onnx"], "om.onnx", "mine.onnx"),
    (["om", "--sim"], "om.sim", True),
    (["om", "--aipp"], "om.aipp", True),
    (["om", "--atc", "/opt/atc"], "om.atc", "/opt/atc"),
    (["om", "--timeout", "30"], "om.timeout_s", 30),
    (["om", "--skip-lint"], "om.lint", False),
    (["om", "--on-board", "dk"], "om.on_board", "dk"),
    (["om", "--ssh-config", "cfg"], "deploy.ssh_config", "cfg"),
    (["deploy", "--board", "a@h", "--board", "b@h:2222"], "deploy.boards", ["a@h", "b@h:2222"]),
    (["deploy", "--known-hosts", "kh"], "deploy.known_hosts", "kh"),
    (["deploy", "--identity", "k1", "--identity", "k2"], "deploy.identities", ["k1", "k2"]),
    (["verify", "--board-dir", "out"], "verify.board_dir", "out"),
    (["doctor", "--board", "dk"], "deploy.boards", ["dk"]),
])
def test_a_flag_sets_its_config_field(argv, key, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ folder: the defaults, then the flag
    assert field(config_for(*argv), key) == expected


def test_atc_arg_adds_to_the_recipes_extra_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[om]\nextra = ["--enable_small_channel=1"]\n')
    cfg = config_for("om", "--config", str(recipe), "--atc-arg=--log=info", "--atc-arg=--op_debug_level=0")
    assert cfg.om.extra == ["--enable_small_channel=1", "--log=info", "--op_debug_level=0"]


def test_board_replaces_the_recipes_boards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[deploy]\nboards = ["old@h"]\n')
    assert config_for("deploy", "--config", str(recipe), "--board", "new@h").deploy.boards == ["new@h"]


def test_trust_new_host_is_never_a_config_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config_for("deploy", "--trust-new-host")
    assert "trust" not in str(dataclasses.asdict(cfg))


def test_run_is_the_same_for_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "mine.toml"
    recipe.write_text("[student]\nepochs = 3\n")
    for command in ("train", "prune", "export", "om", "deploy", "verify"):
        args = build_parser(command).parse_args([command, "--config", str(recipe)])
        cfg, run, source = config_and_run(args)
        assert (str(run), source, cfg.student.epochs) == ("runs/mine", recipe, 3), command


def test_a_run_folders_config_json_is_its_default_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text('{"name": "r", "student": {"epochs": 9}}')
    args = build_parser("verify").parse_args(["verify", "--run", "r"])
    cfg, run, source = config_and_run(args)
    assert cfg.student.epochs == 9 and source == run / "config.json"
