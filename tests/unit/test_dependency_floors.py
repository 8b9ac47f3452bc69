"""The distribution cannot be installed with a release that has a known advisory against it."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# package: (the last release with the advisory, the advisory)
VULNERABLE = {
    "jupyterhub": ("5.5.0", "GHSA-c4gm-pwx9-9w8j / GHSA-69wv-m5fw-2fhp (fixed in 5.5.1)"),
    "jupyterlab": ("4.6.1", "GHSA-pppj-hq3g-57pj, GHSA-gx64-gj6p-pc4c (fixed in 4.6.2)"),
    "jupyter-server": ("2.17.0", "CVE-2026-40934 (fixed in 2.18.0)"),
    "jupyter-server-proxy": ("4.1.2", "CVE-2024-35225 (fixed in 4.2.0)"),
    "jupyter-remote-desktop-proxy": ("3.0.0", "VNC reachable over TCP (fixed in 3.0.1)"),
    "tornado": ("6.4.2", "CVE-2025-47287 (fixed in 6.5)"),
    "jinja2": ("3.1.5", "CVE-2025-27516 (fixed in 3.1.6)"),
    "requests": ("2.32.3", "CVE-2024-47081 (fixed in 2.32.4)"),
    "urllib3": ("2.4.0", "CVE-2025-50181 (fixed in 2.5.0)"),
    "pyjwt": ("2.10.0", "CVE-2024-53861 (fixed in 2.10.1)"),
    "pillow": ("11.2.1", "CVE-2025-48379 (fixed in 11.3.0)"),
}


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    found = {}
    for text in [*project["dependencies"], *project["optional-dependencies"]["session"]]:
        req = Requirement(text)
        found[req.name.lower()] = req
    return found


@pytest.mark.parametrize("package", sorted(VULNERABLE))
def test_no_release_with_a_known_advisory_satisfies_the_requirement(package):
    req = requirements()[package]
    last_bad, advisory = VULNERABLE[package]
    assert not req.specifier.contains(last_bad, prereleases=True), f"{req} admits {last_bad}: {advisory}"
    assert req.specifier.contains(Version(version(package)), prereleases=True), \
        f"the installed {package} {version(package)} does not satisfy {req}"
