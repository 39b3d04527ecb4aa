"""OpenSSH's `Include` for paramiko, whose ssh-config parser ignores it (paramiko 5.1): many users keep their
hosts in `~/.ssh/config.d/*` behind one `Include` line, and such a board alias would silently not resolve."""
from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path

MAX_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH
_KEYWORD = re.compile(r"^\s*(\w+)(?:\s*=\s*|\s+)(.*)$")


def _keyword(line: str) -> str:
    match = _KEYWORD.match(line)
    return match.group(1).lower() if match else ""


def _arguments(line: str) -> list[str]:
    """The words after the keyword, quotes removed, comment dropped (ValueError on an unclosed quote)."""
    return shlex.split(_KEYWORD.match(line).group(2), comments=True)


def host_patterns(text: str) -> set[str]:
    """Every pattern on the Host lines of a text from expand_includes, which has already read each of them
    (paramiko 5.1's get_hostnames() fails on Match blocks)."""
    return {word for line in text.splitlines() if _keyword(line) == "host" for word in _arguments(line)}


class IncludeError(ValueError):
    """A config whose Include lines cannot be expanded; the message says which file and why."""


def expand_includes(path: Path, depth: int = 0) -> str:
    """The text of the ssh config at `path` with every Include line replaced by the files it names.

    As in ssh_config(5): each argument is a path or glob, `~` is the home folder, a relative path is taken
    from ~/.ssh, matches are read in lexical order, a pattern that matches nothing is no error, and nesting
    stops at 16 levels. One case cannot be spliced faithfully and is refused with a clear line: an `Include`
    inside a Host or Match block (other than `Host *` or `Match all`) whose file has Host or Match lines of
    its own (OpenSSH would keep applying the outer block's condition to them).
    """
    if depth > MAX_DEPTH:
        raise IncludeError(f"Include nesting deeper than {MAX_DEPTH} levels at {path} (a file including itself?)")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise IncludeError(f"{path}: {e}") from None
    out: list[str] = []
    in_block = False  # after a Host or Match line: what follows is conditional
    for number, line in enumerate(lines, 1):
        keyword = _keyword(line)
        if keyword not in ("host", "match", "include"):
            out.append(line)
            continue
        try:
            words = _arguments(line)
        except ValueError as e:  # an unclosed quote
            raise IncludeError(f"{path}:{number}: cannot read the {keyword.capitalize()} line: {e}") from None
        if keyword != "include":  # `Host *` and `Match all` apply to everyone, like the top level
            in_block = words not in (["*"], ["all"])
            out.append(line)
            continue
        patterns = words
        for pattern in patterns:
            try:
                target = Path(pattern).expanduser()
            except RuntimeError as e:  # ~someone who does not exist
                raise IncludeError(f"{path}:{number}: cannot expand {pattern}: {e}") from None
            if not target.is_absolute():
                target = Path("~/.ssh").expanduser() / target
            for found in sorted(glob.glob(str(target))):
                text = expand_includes(Path(found), depth + 1)
                opens_blocks = any(_keyword(t) in ("host", "match") for t in text.splitlines())
                if opens_blocks and in_block:
                    raise IncludeError(f"{path}:{number}: Include of {found} inside a Host or Match block, and that "
                                       f"file has Host or Match lines of its own; move the Include line above the "
                                       f"first Host line")
                out += [f"# included from {found}", *text.splitlines()]
                if opens_blocks:  # lines after the Include apply to every host again, as before it
                    out.append("Host *")
    return "\n".join(out) + "\n"
