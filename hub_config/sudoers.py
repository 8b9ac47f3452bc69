"""The hub account's sudo rules: the one template (``templates/sudoers.j2``) that the
deployment and the local stack both install, and the variables it lets through.

The spawner runs ``sudo --preserve-env=NAMES -u USER sbatch``; sudo refuses the whole command
when NAMES holds one that the rules do not keep, so the spawner asks for exactly the names
that :func:`kept` allows, read from the same template the site installed.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import subprocess
from importlib import resources
from pathlib import Path

from jinja2 import Environment, StrictUndefined

# sudo sets these for the target user itself.
SET_BY_SUDO = frozenset({"HOME", "LOGNAME", "PATH", "SHELL", "USER"})
_ENV_KEEP = re.compile(r'^Defaults:.*?\benv_keep\s*=\s*"([^"]*)"', re.MULTILINE)


def template_text() -> str:
    return resources.files(__package__).joinpath("templates", "sudoers.j2").read_text()


@functools.cache
def env_keep_patterns() -> tuple[str, ...]:
    """The names (``JUPYTERHUB_*`` patterns included) the rules keep."""
    match = _ENV_KEEP.search(template_text())
    if match is None:
        raise RuntimeError("the sudoers template has no env_keep line")
    return tuple(match.group(1).split())


def kept(name: str) -> bool:
    """Whether sudo keeps the variable ``name`` for the hub account."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in env_keep_patterns())


def render(*, hub_user: str, session_users: str = "ALL", slurm_bin: str = "/usr/bin",
           home_root: str = "/home", log_dir: str = ".bioimage-gateway/logs",
           alias: str = "GATEWAY") -> str:
    """The rules for a site (what ansible writes to /etc/sudoers.d/bioimage-gateway).
    ``alias`` prefixes the command aliases: sudo warns of an alias defined twice, so rules
    installed side by side (several local stacks) need one each."""
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", alias):
        raise ValueError(f"{alias!r} is not a sudoers alias name (A-Z, 0-9, _)")
    environment = Environment(undefined=StrictUndefined, keep_trailing_newline=True)
    return environment.from_string(template_text()).render(
        hub_user=hub_user, session_users=session_users, slurm_bin=slurm_bin,
        home_root=home_root, log_dir=log_dir, alias=alias)


def install(path: Path, text: str) -> None:
    """Write the rules to ``path`` (in /etc/sudoers.d) only once ``visudo -cf`` accepts them:
    a broken file there would stop sudo for everyone."""
    candidate = path.with_name(f".{path.name}.new")  # sudo ignores names with a dot
    candidate.write_text(text)
    candidate.chmod(0o440)
    check = subprocess.run(["visudo", "-cf", str(candidate)], capture_output=True, text=True)
    if check.returncode != 0:
        candidate.unlink(missing_ok=True)
        raise RuntimeError(f"visudo refused the sudo rules for {path}: {check.stdout}{check.stderr}")
    candidate.replace(path)


__all__ = ["SET_BY_SUDO", "env_keep_patterns", "install", "kept", "render", "template_text"]
