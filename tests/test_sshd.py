"""Finding the sim board's sshd: the system's, a fetched copy in .cache/, or one line saying what to install."""
import os
from pathlib import Path

import pytest

from atlas.errors import UserError
from atlas.sim import sshd as sshd_mod


@pytest.fixture
def no_sshd_anywhere(monkeypatch, tmp_path):
    monkeypatch.delenv(sshd_mod.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(sshd_mod, "SYSTEM_SSHD", tmp_path / "no" / "sshd")
    monkeypatch.setattr(sshd_mod, "cache_dir", lambda: tmp_path / "cache")
    return tmp_path


def test_without_sshd_and_without_fetching_the_line_names_the_install_command(no_sshd_anywhere):
    with pytest.raises(UserError) as e:
        sshd_mod.find_sshd(fetch=False)
    assert "apt-get install -y openssh-server" in e.value.message and "python -m atlas.sim.sshd" in e.value.message
    assert e.value.exit_code == 2 and "\n" not in e.value.message


def test_an_override_that_is_not_a_program_is_one_line(no_sshd_anywhere, monkeypatch):
    monkeypatch.setenv(sshd_mod.ENV_OVERRIDE, str(no_sshd_anywhere / "missing"))
    with pytest.raises(UserError, match="not an executable file"):
        sshd_mod.find_sshd()


def test_a_binary_that_does_not_run_is_refused_with_the_reason(no_sshd_anywhere, monkeypatch):
    fake = no_sshd_anywhere / "sshd"
    fake.write_text("#!/bin/sh\necho 'error while loading shared libraries: libwrap.so.0' >&2\nexit 127\n")
    fake.chmod(0o755)
    monkeypatch.setenv(sshd_mod.ENV_OVERRIDE, str(fake))
    with pytest.raises(UserError, match="does not run .*libwrap.so.0"):
        sshd_mod.find_sshd()


def test_a_half_unpacked_cache_is_not_used(no_sshd_anywhere):
    binary = no_sshd_anywhere / "cache" / "usr" / "sbin" / "sshd"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    assert sshd_mod._cached() is None  # no marker: the unpacking did not finish
    (no_sshd_anywhere / "cache" / sshd_mod.MARKER).write_text(" ".join(sshd_mod.PACKAGES) + "\n")
    assert sshd_mod._cached().binary == binary


def test_the_sshd_in_use_runs_and_as_root_without_its_user_gets_nss_wrapper():
    found = sshd_mod.find_sshd(fetch=True)  # conftest made sure one is there
    assert found.binary.is_absolute()
    if os.geteuid() == 0 and not sshd_mod._has_user(sshd_mod.PRIVSEP_USER):
        env = found.environment(Path("/tmp/passwd-copy"))
        assert env["LD_PRELOAD"].endswith(sshd_mod.NSS_WRAPPER) and env["NSS_WRAPPER_PASSWD"] == "/tmp/passwd-copy"


def test_the_passwd_copy_keeps_every_user_and_adds_the_privsep_one(tmp_path):
    copy = sshd_mod.write_passwd_copy(tmp_path / "passwd")
    lines = copy.read_text().splitlines()
    assert lines[:-1] == Path("/etc/passwd").read_text().splitlines()
    assert lines[-1].startswith("sshd:x:")
