"""The demo and the tests do not hand root to a local user.

The local stack runs as root on a machine whose demo users are real Unix users: a state
directory one of them prepared, a ``devstack.json`` one of them wrote, or a link one of them
left in their home must never make root act for them."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bioimage_gateway.devstack.data_services import write_irods_client_config
from bioimage_gateway.devstack.stack import DEMO_USERS, Devstack, ensure_unix_user
from bioimage_gateway.devstack.trust import UntrustedPath, prepare_state_dir

CLI = str(Path(sys.executable).parent / "bioimage-gateway")


def as_user(user: str, argv: list[str]) -> subprocess.CompletedProcess:
    account = pwd.getpwnam(user)
    return subprocess.run(argv, user=account.pw_uid, group=account.pw_gid, extra_groups=[],
                          capture_output=True, text=True, cwd="/", check=True)


@pytest.fixture
def bob():
    ensure_unix_user("bob")
    return "bob"


@pytest.fixture
def tmp_root_dir():
    path = Path(tempfile.mkdtemp(prefix="gw-trust-", dir="/tmp"))
    os.chmod(path, 0o1777)  # like /tmp: anyone may create in it, only the owner remove
    yield path
    subprocess.run(["rm", "-rf", "--", str(path)], check=False)


@pytest.fixture
def sleeper():
    """A process of root's that a forged devstack.json names for the stack to kill."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def devstack_cli(action: str, state_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "devstack", action, "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=120)


def test_a_state_directory_another_user_made_is_refused_before_anything_starts(bob, tmp_root_dir):
    planted = tmp_root_dir / "bioimage-gateway-demo"
    as_user(bob, ["mkdir", "-m", "0777", str(planted)])
    result = devstack_cli("up", planted)
    assert result.returncode == 1
    assert f"{planted} belongs to bob, not root" in result.stderr
    assert not (planted / "devstack.json").exists()
    assert not (planted / "slurm").exists()  # nothing started, nothing written there


@pytest.mark.parametrize("make", ["world-writable", "symlink"])
def test_a_state_directory_others_can_change_is_refused(make, tmp_root_dir):
    target = tmp_root_dir / "state"
    if make == "world-writable":
        target.mkdir(mode=0o777)
        target.chmod(0o777)
        expected = f"{target} is writable by other users"
    else:
        (tmp_root_dir / "elsewhere").mkdir(mode=0o700)
        target.symlink_to(tmp_root_dir / "elsewhere")
        expected = f"{target} is a symbolic link"
    with pytest.raises(UntrustedPath, match=expected.replace("(", r"\(")):
        prepare_state_dir(target)
    assert list((tmp_root_dir / "elsewhere").iterdir() if make == "symlink" else target.iterdir()) == []


def test_the_default_state_directory_is_fresh_and_private():
    first, second = prepare_state_dir(None), prepare_state_dir(None)
    try:
        assert first != second
        for path in (first, second):
            info = os.lstat(path)
            assert stat.S_ISDIR(info.st_mode) and info.st_uid == 0
            assert stat.S_IMODE(info.st_mode) == 0o700
            assert list(path.iterdir()) == []
    finally:
        first.rmdir()
        second.rmdir()


def test_a_devstack_record_another_user_wrote_is_never_acted_on(bob, tmp_root_dir, sleeper):
    """`devstack down` kills the PIDs in devstack.json: one that bob wrote must not make root kill."""
    forged = f'{{"pids": {{"slurmctld": {sleeper.pid}}}, "slurm": {{}}}}'
    # bob's own folder in /tmp, named as a demo state directory
    bobs = tmp_root_dir / "bobs-state"
    as_user(bob, ["mkdir", "-m", "0755", str(bobs)])
    as_user(bob, ["sh", "-c", f"printf '%s' '{forged}' > {bobs}/devstack.json"])
    result = devstack_cli("down", bobs)
    assert result.returncode == 1 and f"{bobs} belongs to bob" in result.stderr
    # a root-owned folder, but a record that bob owns (or a link to one)
    rooted = tmp_root_dir / "rooted"
    rooted.mkdir(mode=0o700)
    as_user(bob, ["sh", "-c", f"printf '%s' '{forged}' > {tmp_root_dir}/bobs-record"])
    os.symlink(tmp_root_dir / "bobs-record", rooted / "devstack.json")
    result = devstack_cli("down", rooted)
    assert result.returncode == 1 and "without following a link" in result.stderr
    (rooted / "devstack.json").unlink()
    os.link(tmp_root_dir / "bobs-record", rooted / "devstack.json")  # a hard link: bob's file
    with pytest.raises(UntrustedPath, match="owner bob"):
        Devstack(rooted).down()
    assert sleeper.poll() is None, "root killed a process named in a file that bob wrote"


def test_irods_files_written_into_a_home_do_not_follow_the_users_links(devstack, tmp_root_dir):
    """alice links ~/.irods/.irodsA to a file of root's; writing her iRODS files must neither
    change that file nor give it to her."""
    alice = pwd.getpwnam("alice")
    victim = tmp_root_dir / "shadow"
    victim.write_text("root:secret\n")
    victim.chmod(0o600)
    as_user("alice", ["mkdir", "-p", "-m", "0700", f"{alice.pw_dir}/.irods"])
    as_user("alice", ["rm", "-f", f"{alice.pw_dir}/.irods/.irodsA", f"{alice.pw_dir}/.irods/irods_environment.json"])
    as_user("alice", ["ln", "-s", str(victim), f"{alice.pw_dir}/.irods/.irodsA"])
    as_user("alice", ["ln", "-s", str(tmp_root_dir / "made-by-root"), f"{alice.pw_dir}/.irods/irods_environment.json"])
    irods = devstack.record()["data_services"]["irods"]
    try:
        user = next(u for u in DEMO_USERS if u["username"] == "alice")
        write_irods_client_config(user, irods["host"], irods["port"])
        info = os.lstat(victim)
        assert victim.read_text() == "root:secret\n" and info.st_uid == 0
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert not (tmp_root_dir / "made-by-root").exists()
        for name in (".irodsA", "irods_environment.json"):
            written = os.lstat(f"{alice.pw_dir}/.irods/{name}")
            assert stat.S_ISREG(written.st_mode) and written.st_uid == alice.pw_uid
            assert stat.S_IMODE(written.st_mode) == 0o600
    finally:
        devstack.write_client_files()


def test_the_stacks_logs_and_servers_files_are_root_s_alone(devstack):
    """The demo users share the machine: they can reach slurm.conf (their jobs need it), not
    list the state directory or read what the daemons log."""
    state = devstack.state_dir
    assert stat.S_IMODE(os.lstat(state).st_mode) == 0o711
    alice = pwd.getpwnam("alice")
    listing = subprocess.run(["ls", str(state)], user=alice.pw_uid, group=alice.pw_gid, extra_groups=[],
                             capture_output=True, text=True)
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    as_user("alice", ["cat", str(devstack.slurm().conf)])
    logs = [state / "idp.log", state / "irods" / "server.log", state / "omero" / "server.log"]
    record = devstack.record()
    if record.get("accounting"):
        logs.append(state / "accounting" / "mariadbd.out")
    for log in logs:
        assert log.exists(), log
        denied = subprocess.run(["cat", str(log)], user=alice.pw_uid, group=alice.pw_gid, extra_groups=[],
                                capture_output=True, text=True)
        assert denied.returncode != 0, f"alice can read {log}"
        assert not os.lstat(log).st_mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH), log
