"""The hub account's sudo rules allow exactly the commands the spawner runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from bioimage_gateway.devstack.processes import run
from bioimage_gateway.devstack.stack import ensure_unix_user
from bioimage_gateway.hub_config import sudoers

TEMPLATE = Path(__file__).parents[1] / "ansible/roles/bioimage_gateway/templates/sudoers.j2"
HUB_USER = "gwhub"
INSTALLED = Path("/etc/sudoers.d/zz-bioimage-gateway-test")


def render(**overrides) -> str:
    """The shipped template (the file ansible links to), rendered as a site would."""
    assert TEMPLATE.read_text() == sudoers.template_text()
    values = dict(hub_user=HUB_USER, slurm_bin="/usr/bin", home_root="/home",
                  log_dir=".bioimage-gateway/logs", session_users="alice, bob", alias="GATEWAY_TEST")
    values.update(overrides)
    return sudoers.render(**values)


@pytest.fixture(scope="module")
def sudo_rules(tmp_path_factory):
    ensure_unix_user(HUB_USER)
    candidate = tmp_path_factory.mktemp("sudoers") / "bioimage-gateway"
    candidate.write_text(render())
    check = run(["visudo", "-cf", str(candidate)], check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    INSTALLED.write_text(candidate.read_text())
    INSTALLED.chmod(0o440)
    try:
        yield
    finally:
        INSTALLED.unlink(missing_ok=True)


def as_hub(argv: list[str], slurm, extra_env=None, **kwargs) -> subprocess.CompletedProcess:
    # LD_PRELOAD names a library that does not exist: harmless, and visible if passed on.
    env = {"SLURM_CONF": str(slurm.conf), "PATH": "/usr/bin:/bin",
           "JUPYTERHUB_API_TOKEN": "t0ken", "LD_PRELOAD": "/nonexistent/evil.so",
           **(extra_env or {})}
    return subprocess.run(["/usr/sbin/runuser", "-u", HUB_USER, "--", *argv], env=env,
                          capture_output=True, text=True, **kwargs)


def test_spawner_commands_work_as_the_hub_account(sudo_rules, slurm):
    """Our SlurmClient, run as the unprivileged hub account, submits, reads and cancels."""
    token = uuid.uuid4().hex  # job ids repeat across stacks; the token marks this job's log
    program = textwrap.dedent(f"""
        import asyncio, json
        from bioimage_gateway.slurm import SlurmClient
        async def main():
            c = SlurmClient(conf={str(slurm.conf)!r})
            await c.make_user_dir("alice", "/home/alice/.bioimage-gateway/logs")
            job = await c.submit("alice", "#!/bin/bash\\n#SBATCH --output=/home/alice/"
                ".bioimage-gateway/logs/jupyter-session-%j.log\\n#SBATCH --chdir=/home/alice\\n"
                "echo token=$JUPYTERHUB_API_TOKEN preload=${{LD_PRELOAD:-none}}\\nsleep 30\\n",
                {{"JUPYTERHUB_API_TOKEN": {token!r}}})
            info = await c.job(job)
            for _ in range(100):
                tail = await c.tail_file("alice", f"/home/alice/.bioimage-gateway/logs/jupyter-session-{{job}}.log")
                if "token=" + {token!r} in tail: break
                await asyncio.sleep(0.2)
            await c.cancel("alice", job)
            print(json.dumps({{"job": job, "user_state": info.state, "tail": tail}}))
        asyncio.run(main())
    """)
    result = as_hub([sys.executable, "-c", program], slurm, timeout=60,
                    extra_env={"JUPYTERHUB_API_TOKEN": token})
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip().splitlines()[-1]
    assert '"user_state": "' in out
    # The token passed through; the hub's LD_PRELOAD did not.
    assert f"token={token} preload=none" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["sudo", "-n", "-u", "alice", "/usr/bin/id"],
        ["sudo", "-n", "-u", "root", "/usr/bin/sbatch", "--parsable"],
        ["sudo", "-n", "-u", "eve", "/usr/bin/sbatch", "--parsable"],
        ["sudo", "-n", "-E", "-u", "alice", "/usr/bin/sbatch", "--parsable"],
        ["sudo", "-n", "-u", "alice", "/usr/bin/sbatch", "--parsable", "--wrap=id"],
        ["sudo", "-n", "-u", "alice", "/usr/bin/scancel", "1", "--user=bob"],
        ["sudo", "-n", "-u", "alice", "/usr/bin/scancel", "--user=alice"],
        ["sudo", "-n", "-u", "alice", "/usr/bin/tail", "-n", "30", "--", "/etc/shadow"],
        ["sudo", "-n", "-u", "alice", "/usr/bin/tail", "-n", "30", "--",
         "/home/alice/.bioimage-gateway/logs/../../.ssh/id_rsa"],
        ["sudo", "-n", "-u", "alice", "/usr/bin/mkdir", "-p", "-m", "0777", "--", "/tmp/x"],
    ],
    ids=lambda argv: " ".join(argv[2:]),
)
def test_anything_else_is_refused(sudo_rules, slurm, argv):
    result = as_hub(argv, slurm, timeout=30)
    assert result.returncode != 0
    assert "password is required" in result.stderr or "not allowed" in result.stderr, result.stderr


def test_variables_outside_the_list_never_reach_the_job(sudo_rules, slurm):
    """Even when the hub asks sudo to keep them, LD_PRELOAD and PYTHONPATH stay behind."""
    marker = Path("/home/alice/sudoers-env-probe.out")
    marker.unlink(missing_ok=True)
    script = (f"#!/bin/bash\n#SBATCH --output={marker}\n#SBATCH --chdir=/home/alice\n"
              "echo preload=${LD_PRELOAD:-none} pythonpath=${PYTHONPATH:-none} "
              "token=${JUPYTERHUB_API_TOKEN:-none}\n")
    result = as_hub(
        ["sudo", "-n", "--preserve-env=SLURM_CONF,JUPYTERHUB_API_TOKEN,LD_PRELOAD,PYTHONPATH",
         "-u", "alice", "/usr/bin/sbatch", "--parsable"],
        slurm, input=script, timeout=30,
        extra_env={"PYTHONPATH": "/tmp/evil"},
    )
    if result.returncode == 0:
        job = result.stdout.strip().splitlines()[-1]
        for _ in range(100):
            if marker.exists() and marker.read_text().strip():
                break
            time.sleep(0.2)
        assert marker.read_text().split() == ["preload=none", "pythonpath=none", "token=t0ken"], job
    else:
        assert "not allowed" in result.stderr, result.stderr
