"""An OpenSSH server for the sim board, found or fetched without touching the machine's services.

Installing Debian's `openssh-server` starts a system sshd on port 22 (its postinst enables the service), which a
workstation should not get as a side effect of `make test`. So, in order:

1. `$ATLAS_KD_SSHD`, a path to an sshd binary you choose;
2. the system's `/usr/sbin/sshd`, when the package is installed;
3. `<repo>/.cache/openssh/usr/sbin/sshd`: the Debian packages `openssh-server` and `libwrap0` fetched with
   `apt-get download` (no root needed) and unpacked with `dpkg-deb -x`; nothing is installed or started;
4. under `CI=true` as root only: `apt-get install -y openssh-server` (a throw-away CI machine).

sshd run as root refuses to start without its privilege-separation user `sshd`, which only the package's postinst
creates. Then the sim board runs it with nss_wrapper (Debian's `libnss-wrapper`, fetched the same way: the library
Samba's and sssd's test suites use to give a daemon users of its own), whose passwd file is a copy of /etc/passwd
plus that user: the machine's /etc/passwd is not changed, and the board's logins do not inherit the preload.

`python -m atlas.sim.sshd` makes sure one is there (what `make test` runs first); it exits 2 with one line giving
the command to run when none can be had.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from atlas.errors import UserError

SYSTEM_SSHD = Path("/usr/sbin/sshd")
ENV_OVERRIDE = "ATLAS_KD_SSHD"
# libwrap0: the one library sshd links that a client-only machine lacks; libnss-wrapper: see the module doc
PACKAGES = ("openssh-server", "libwrap0", "libnss-wrapper")
NSS_WRAPPER = "libnss_wrapper.so"
MARKER = "atlas-kd-packages.txt"  # written last: the cache is complete
PRIVSEP_USER = "sshd"
INSTALL_HINT = ("no OpenSSH server for the sim board: install it (apt-get install -y openssh-server), or put an sshd "
                f"binary at ${ENV_OVERRIDE}")


@dataclass
class Sshd:
    """How to start sshd: the binary, the library path it needs, and the nss_wrapper it needs (run as root on a
    machine without the `sshd` user)."""

    binary: Path
    source: str  # "env", "system", "cache" or "apt-get install"
    library_path: list[str] = field(default_factory=list)
    nss_wrapper: Path | None = None

    @property
    def needs_privsep_user(self) -> bool:
        return self.nss_wrapper is not None

    def command(self, args: list[str]) -> list[str]:
        return [str(self.binary), *args]  # absolute: sshd re-executes itself

    def environment(self, passwd_copy: Path | None = None) -> dict[str, str]:
        """sshd's environment; with `needs_privsep_user`, nss_wrapper preloaded over `passwd_copy`
        (see `write_passwd_copy`)."""
        env = dict(os.environ)
        if self.library_path:
            env["LD_LIBRARY_PATH"] = ":".join([*self.library_path, *filter(None, [env.get("LD_LIBRARY_PATH")])])
        if self.nss_wrapper is not None:
            if passwd_copy is None:
                raise ValueError("this sshd needs a passwd copy with its privilege-separation user")
            env.update(LD_PRELOAD=str(self.nss_wrapper), NSS_WRAPPER_PASSWD=str(passwd_copy),
                       NSS_WRAPPER_GROUP="/etc/group")
        return env


def cache_dir() -> Path:
    """`<repo>/.cache/openssh` in a source checkout, else under the user's cache."""
    repo = Path(__file__).resolve().parents[2]
    base = repo / ".cache" if (repo / "pyproject.toml").is_file() else Path.home() / ".cache" / "atlas-kd"
    return base / "openssh"


def find_sshd(fetch: bool = False, log=None) -> Sshd:
    """The sshd to use (see the module doc); with `fetch`, download and unpack it when there is none.
    Raises UserError (one line with the command to run) when none can be had."""
    override = os.environ.get(ENV_OVERRIDE)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UserError(f"${ENV_OVERRIDE}={override}: not an executable file")
        return _checked(Sshd(path, "env"))
    if os.access(SYSTEM_SSHD, os.X_OK):
        return _checked(Sshd(SYSTEM_SSHD, "system"))
    cached = _cached()
    if cached is not None:
        return _checked(cached)
    if not fetch:
        raise UserError(INSTALL_HINT + "; `python -m atlas.sim.sshd` fetches one into .cache/ without installing it")
    if os.environ.get("CI") == "true" and os.geteuid() == 0 and shutil.which("apt-get"):
        _say(log, "CI=true: apt-get install -y openssh-server")
        _run(["apt-get", "install", "-y", "-qq", "openssh-server"], "apt-get install openssh-server")
        return _checked(Sshd(SYSTEM_SSHD, "apt-get install"))
    _fetch_into_cache(log)
    cached = _cached()
    if cached is None:
        raise UserError(f"unpacked {', '.join(PACKAGES)} into {cache_dir()} but found no usr/sbin/sshd there; "
                        + INSTALL_HINT)
    return _checked(cached)


def _cached() -> Sshd | None:
    root = cache_dir()
    binary = root / "usr" / "sbin" / "sshd"
    marker = root / MARKER
    if not (binary.is_file() and os.access(binary, os.X_OK) and marker.is_file()
            and marker.read_text().split() == list(PACKAGES)):  # unpacked whole, from today's package list
        return None
    libs = [str(p) for p in (root / "usr" / "lib" / "x86_64-linux-gnu", root / "lib" / "x86_64-linux-gnu",
                             root / "usr" / "lib" / "aarch64-linux-gnu", root / "lib" / "aarch64-linux-gnu")
            if p.is_dir()]
    return Sshd(binary, "cache", library_path=libs)


def _checked(sshd: Sshd) -> Sshd:
    """Make sure the binary runs (`sshd -V`) and note whether it needs the privilege-separation user."""
    try:
        result = subprocess.run([str(sshd.binary), "-V"], capture_output=True, text=True, timeout=20,
                                env=sshd.environment())
    except OSError as e:
        raise UserError(f"{sshd.binary} cannot be started ({e.strerror or e}); {INSTALL_HINT}") from None
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{sshd.binary} does not run ({why}); {INSTALL_HINT}")
    if os.geteuid() == 0 and not _has_user(PRIVSEP_USER):
        sshd.nss_wrapper = _nss_wrapper()
        if sshd.nss_wrapper is None:
            raise UserError(f"sshd runs as root only with a user '{PRIVSEP_USER}' (its privilege separation), which "
                            f"this machine lacks, and no {NSS_WRAPPER} was found to supply one privately; "
                            "`python -m atlas.sim.sshd` fetches it, or apt-get install -y openssh-server creates the "
                            "user")
    return sshd


def _nss_wrapper() -> Path | None:
    for folder in (cache_dir() / "usr" / "lib", Path("/usr/lib")):
        for candidate in sorted(folder.glob(f"*/{NSS_WRAPPER}")) + [folder / NSS_WRAPPER]:
            if candidate.is_file():
                return candidate
    return None


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def write_passwd_copy(path: Path) -> Path:
    """The machine's /etc/passwd plus the privilege-separation user, for nss_wrapper."""
    from atlas.fileio import write_text

    text = Path("/etc/passwd").read_text()
    if not text.endswith("\n"):
        text += "\n"
    write_text(path, text + f"{PRIVSEP_USER}:x:65533:65534:sshd privilege separation (atlas-kd sim board):"
                            "/run/sshd:/usr/sbin/nologin\n")
    return path


def _fetch_into_cache(log) -> None:
    missing = [tool for tool in ("apt-get", "dpkg-deb") if not shutil.which(tool)]
    if missing:
        raise UserError(f"{' and '.join(missing)} not found, so no sshd can be fetched; {INSTALL_HINT}")
    target = cache_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    _say(log, f"fetching {' '.join(PACKAGES)} (apt-get download) into {target}: unpacked only, no service started")
    with tempfile.TemporaryDirectory(prefix=".openssh-", dir=target.parent) as tmp:
        _run(["apt-get", "download", "-qq", *PACKAGES], "apt-get download " + " ".join(PACKAGES), cwd=tmp)
        unpacked = Path(tmp) / "root"
        for deb in sorted(Path(tmp).glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"dpkg-deb -x {deb.name}")
        (unpacked / MARKER).write_text(" ".join(PACKAGES) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.rename(unpacked, target)


def _run(argv: list[str], what: str, cwd: str | None = None) -> None:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"{what} failed ({e}); {INSTALL_HINT}") from None
    if result.returncode != 0:
        why = ([line for line in result.stderr.splitlines() if line.strip() and not line.startswith("W:")]
               or ["no output"])[-1]
        raise UserError(f"{what} failed ({why.strip()}); {INSTALL_HINT}")


def _say(log, message: str) -> None:
    (log or (lambda m: print(m, file=sys.stderr, flush=True)))(message)


def doctor_report() -> dict:
    """What `atlas-kd doctor` says about the sim board's sshd (found only, never fetched)."""
    try:
        sshd = find_sshd(fetch=False)
    except UserError as e:
        return {"sshd": None, "why": e.message}
    return {"sshd": str(sshd.binary), "sshd_source": sshd.source}


def main() -> int:
    try:
        sshd = find_sshd(fetch=True)
    except UserError as e:
        print(f"atlas-kd sim board: error: {e.message}", file=sys.stderr)
        return e.exit_code
    note = f" (with {sshd.nss_wrapper}, which adds the 'sshd' user for it alone)" if sshd.needs_privsep_user else ""
    print(f"sim board sshd: {sshd.binary} ({sshd.source}){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
