"""Count the Slurm queries a hub really runs: wrappers that log, then exec the real one.

A hub whose ``slurm.bin_dir`` points at such a directory runs every Slurm query
through a wrapper; tests and benchmarks count the log's lines.  ``sbatch`` and
``scancel`` there are links to the real commands, not wrappers: the hub runs
them through sudo as the user, and the sudo rules allow the real commands only
(sudo matches a link by the file it names).  Count submissions in the queue.
"""

from __future__ import annotations

from pathlib import Path

QUERY_COMMANDS = ("squeue", "sacct", "sacctmgr", "scontrol", "sinfo")
SUDO_COMMANDS = ("sbatch", "scancel")


def counting_bin_dir(directory: Path, real_bin: Path = Path("/usr/bin")) -> Path:
    """Write the wrappers into ``directory``; return the log they append to."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "calls.log"
    log.touch()
    log.chmod(0o666)  # the hub's account appends to it
    for name in QUERY_COMMANDS:
        wrapper = directory / name
        wrapper.write_text(f'#!/bin/sh\necho "$(date +%s.%N) {name}" >> {log}\n'
                           f'exec {real_bin / name} "$@"\n')
        wrapper.chmod(0o755)
    for name in SUDO_COMMANDS:
        (directory / name).unlink(missing_ok=True)
        (directory / name).symlink_to(real_bin / name)
    directory.chmod(0o755)
    return log


def count_calls(log: Path, since: float, until: float) -> dict[str, int]:
    counts = dict.fromkeys(QUERY_COMMANDS, 0)
    for line in log.read_text().splitlines():
        stamp, name = line.split()
        if since <= float(stamp) < until:
            counts[name] += 1
    return counts
