"""Count the Slurm commands a hub really runs: wrappers that log, then exec the real one.

A hub whose ``slurm.bin_dir`` points at such a directory runs every Slurm
command through a wrapper; tests and benchmarks count the log's lines.
"""

from __future__ import annotations

from pathlib import Path

SLURM_COMMANDS = ("squeue", "sacct", "sacctmgr", "scontrol", "sinfo", "sbatch", "scancel")
QUERY_COMMANDS = ("squeue", "sacct", "sacctmgr", "scontrol", "sinfo")


def counting_bin_dir(directory: Path, real_bin: Path = Path("/usr/bin")) -> Path:
    """Write the wrappers into ``directory``; return the log they append to."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "calls.log"
    log.touch()
    log.chmod(0o666)  # sbatch and scancel run as the session's user, through sudo
    for name in SLURM_COMMANDS:
        wrapper = directory / name
        wrapper.write_text(f'#!/bin/sh\necho "$(date +%s.%N) {name}" >> {log}\n'
                           f'exec {real_bin / name} "$@"\n')
        wrapper.chmod(0o755)
    directory.chmod(0o755)
    return log


def count_calls(log: Path, since: float, until: float) -> dict[str, int]:
    counts = dict.fromkeys(SLURM_COMMANDS, 0)
    for line in log.read_text().splitlines():
        stamp, name = line.split()
        if since <= float(stamp) < until:
            counts[name] += 1
    return counts
