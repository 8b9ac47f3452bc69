"""``python -m bioimage_gateway.staging run <job.json>``: the detached background runner."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m bioimage_gateway.staging run <job.json>", file=sys.stderr)
        return 2
    from .api import run_job
    from .errors import StagingError
    try:
        path = run_job(argv[1])
    except StagingError as exc:
        print(f"staging failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
