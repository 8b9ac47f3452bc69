"""The staging cache trusts only what its user made: on a world-writable scratch another user can
make the folders of someone's cache first, plant an entry whose manifest says complete, or put a
symbolic link in the way. Real Unix users (alice and bob) do it here; alice's stage refuses with
an error naming the folder and its owner, and returns nothing of bob's."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bioimage_gateway import staging
from bioimage_gateway.staging import UntrustedPath

# Run as alice: stage a local file into her cache; one JSON line says what happened.
ALICE_STAGES = """
import json, sys
from bioimage_gateway import staging
try:
    path = staging.stage(sys.argv[1])
except staging.StagingError as exc:
    print(json.dumps({"refused": type(exc).__name__, "message": str(exc),
                      "path": getattr(exc, "path", None), "owner": getattr(exc, "owner", None)}))
else:
    print(json.dumps({"path": str(path), "content": open(path).read()}))
"""

# Run as bob: a complete-looking entry for alice's source, in ``cache`` (her cache's place).
BOB_PLANTS = """
import json, os, sys
from bioimage_gateway import staging
source, cache, mode = sys.argv[1], sys.argv[2], int(sys.argv[3], 8)
key = staging.cache_key(source, {})
entry = os.path.join(cache, key)
os.makedirs(entry)
for name, doc in ((".entry.json", {"url": source, "key": key, "name": "data.txt", "selection": {}}),
                  (".staged.json", {"complete": True, "key": key, "name": "data.txt", "bytes": 11,
                                    "objects": 1})):
    with open(os.path.join(entry, name), "w") as f:
        json.dump(doc, f)
with open(os.path.join(entry, "data.txt"), "w") as f:
    f.write("bob's data\\n")
for name in os.listdir(entry):  # alice may touch them (as a stage marks its last use)
    os.chmod(os.path.join(entry, name), 0o666)
folder = entry
while folder != os.path.dirname(sys.argv[4]):
    os.chmod(folder, mode)
    folder = os.path.dirname(folder)
"""


@pytest.fixture(scope="module")
def users():
    if os.geteuid() != 0:
        pytest.skip("acting as alice and bob needs root (the tests run as root in make test)")
    from bioimage_gateway.devstack.stack import ensure_unix_user
    return {name: ensure_unix_user(name) for name in ("alice", "bob")}


class SharedScratch:
    """A world-writable, sticky scratch folder (as ``/scratch`` is) and a file of alice's to stage."""

    def __init__(self, root: Path):
        self.root = root
        self.scratch = root / "scratch"
        self.scratch.mkdir()
        self.scratch.chmod(0o1777)
        (root / "source").mkdir(mode=0o755)
        self.source = root / "source" / "data.txt"
        self.source.write_text("alice's data\n")
        self.source.chmod(0o644)
        self.alice = self.scratch / "alice"  # her $BIOIMAGE_GATEWAY_SCRATCH
        self.cache = self.alice / "bioimage-gateway" / "staging"

    def run_as(self, user: str, code: str, *args: str) -> dict | None:
        account = pwd.getpwnam(user)
        env = {"PATH": "/usr/bin:/bin", "HOME": account.pw_dir, "USER": user, "LANG": "C.UTF-8",
               "BIOIMAGE_GATEWAY_SCRATCH": str(self.scratch / user),
               "BIOIMAGE_GATEWAY_ACTIVE_DIR": str(self.scratch / f"{user}-activity")}
        done = subprocess.run([sys.executable, "-c", code, *args], user=user, group=account.pw_gid,
                              extra_groups=[], env=env, cwd=self.root, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{user}: {done.stderr[-2000:]}"
        lines = done.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else None

    def alice_stages(self) -> dict:
        return self.run_as("alice", ALICE_STAGES, str(self.source))

    def bob_plants(self, cache: Path, mode: str = "755", top: Path | None = None) -> None:
        """bob's entry for alice's source in ``cache``, its folders down from ``top`` (the
        first one he made) given ``mode``."""
        self.run_as("bob", BOB_PLANTS, str(self.source), str(cache), mode, str(top or self.alice))


@pytest.fixture
def shared(users):
    root = Path(tempfile.mkdtemp(prefix="gw-shared-scratch-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield SharedScratch(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def assert_refused(result: dict, path: Path, owner: str, why: str) -> None:
    assert result.get("refused") == "UntrustedPath", result
    assert result["path"] == str(path) and result["owner"] == owner
    assert str(path) in result["message"] and f"owner {owner}" in result["message"] and why in result["message"]
    assert "bob's data" not in json.dumps(result)


@pytest.mark.parametrize("mode", ["755", "777"])
def test_a_cache_folder_bob_made_first_is_refused(shared, mode):
    shared.bob_plants(shared.cache, mode)  # /scratch/alice/... made by bob, with a "complete" entry
    assert_refused(shared.alice_stages(), shared.alice, "bob", "belongs to bob, neither root nor alice")

    shutil.rmtree(shared.alice)  # gone: alice's own stage makes her folders and works
    staged = shared.alice_stages()
    assert staged["content"] == "alice's data\n" and staged["path"].startswith(str(shared.cache))
    assert pwd.getpwuid(shared.alice.stat().st_uid).pw_name == "alice"


def test_a_link_bob_put_where_alices_cache_goes_is_refused(shared):
    bobs = shared.scratch / "bob-cache"
    shared.bob_plants(bobs / "bioimage-gateway" / "staging", top=bobs)
    shared.run_as("bob", f"import os; os.symlink({str(bobs)!r}, {str(shared.alice)!r})")
    assert_refused(shared.alice_stages(), shared.alice, "bob", "is a symbolic link")


def test_an_entry_bob_planted_in_alices_folder_left_writable_is_refused(shared):
    shared.run_as("alice", f"import os; os.mkdir({str(shared.alice)!r}); os.chmod({str(shared.alice)!r}, 0o777)")
    shared.bob_plants(shared.cache, top=shared.alice / "bioimage-gateway")
    assert_refused(shared.alice_stages(), shared.alice, "alice", "is writable by others")


# --- links the stager did not make (as root, in one process) -------------------------------

def test_a_symlinked_entry_or_manifest_is_refused_not_returned(scratch, tmp_path):
    source = tmp_path / "data.txt"
    source.write_text("mine\n")
    entry = staging.stage(source).parent
    planted = tmp_path / "planted"
    shutil.copytree(entry, planted)
    (planted / "data.txt").write_text("planted\n")

    shutil.rmtree(entry)
    entry.symlink_to(planted)  # the whole entry
    with pytest.raises(UntrustedPath, match="is a symbolic link") as refused:
        staging.stage(source)
    assert refused.value.path == str(entry)
    with pytest.raises(UntrustedPath, match="is a symbolic link"):
        staging.status()  # the cache's entries

    entry.unlink()
    entry = staging.stage(source).parent
    (entry / ".staged.json").unlink()
    (entry / ".staged.json").symlink_to(planted / ".staged.json")  # only the manifest
    with pytest.raises(UntrustedPath, match="is a symbolic link") as refused:
        staging.stage(source)
    assert refused.value.path == str(entry / ".staged.json")
    assert (planted / "data.txt").read_text() == "planted\n"


def test_a_link_inside_a_destination_is_not_followed(scratch, tmp_path):
    source = tmp_path / "run"
    (source / "b").mkdir(parents=True)
    (source / "a.txt").write_text("a")
    (source / "b" / "c.txt").write_text("c")
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "run").symlink_to(outside)  # where the copy's folder goes

    with pytest.raises(UntrustedPath, match="is a symbolic link") as refused:
        staging.stage(source, dest=dest)
    assert refused.value.path == str(dest / "run")
    assert list(outside.iterdir()) == []  # nothing written through it
