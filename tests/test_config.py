from pathlib import Path

import pytest

from atlas.cli import main
from atlas.config import Config, load_config
from atlas.errors import UserError


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_then_file_then_overrides(tmp_path):
    path = write(tmp_path, "[student]\nepochs = 7\nmodel = 'mlp50'\n", name="mine.toml")
    cfg = load_config(path, {"student.epochs": "3", "data.dir": "/x", "om.extra": "--a=1,--b=2", "om.aipp": "true"})
    assert cfg.name == "mine"  # the run name defaults to the file's stem
    assert (cfg.student.model, cfg.student.epochs) == ("mlp50", 3)
    assert cfg.data.dir == "/x" and cfg.om.extra == ["--a=1", "--b=2"] and cfg.om.aipp is True
    assert cfg.teacher.model == Config().teacher.model


def test_unknown_key_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'student.epoch'"):
        load_config(write(tmp_path, "[student]\nepoch = 3\n"))


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(UserError, match=r"unknown section \[studnet\]"):
        load_config(write(tmp_path, "[studnet]\nepochs = 3\n"))


@pytest.mark.parametrize("text, key", [
    ("[student]\nepochs = 'three'\n", "student.epochs"),
    ("[student]\nepochs = 2.5\n", "student.epochs"),
    ("[data]\naugment = 1\n", "data.augment"),
    ("seed = true\n", "seed"),
    ("[om]\nextra = '--x'\n", "om.extra"),
])
def test_wrong_type_names_the_key(tmp_path, text, key):
    with pytest.raises(UserError, match=f"'{key}' must be"):
        load_config(write(tmp_path, text))


def test_invalid_toml_is_reported(tmp_path):
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(write(tmp_path, "[student\n"))


def test_command_line_override_with_bad_value_is_one_line(tmp_path, capsys):
    code = main(["train", "--config", str(write(tmp_path, "")), "--student-epochs", "many"])
    err = capsys.readouterr().err
    assert code == 2 and "'student.epochs' must be an integer" in err and len(err.strip().splitlines()) == 1


def test_set_requires_key_value(tmp_path, capsys):
    assert main(["train", "--config", str(write(tmp_path, "")), "--set", "student.epochs"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_every_recipe_in_configs_loads():
    for path in sorted(Path(__file__).resolve().parents[1].glob("configs/*.toml")):
        cfg = load_config(path)
        assert cfg.name == path.stem
