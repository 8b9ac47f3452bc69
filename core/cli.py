"""``bioimage-gateway``: the command line of the gateway and of its local stack."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def _state_dir(value: str | None) -> Path:
    return Path(value) if value else Path(tempfile.mkdtemp(prefix="bioimage-gateway-"))


def cmd_devstack(args) -> int:
    from bioimage_gateway.devstack.stack import Devstack

    stack = Devstack(Path(args.state_dir))
    if args.action == "up":
        record = stack.up(session_env=args.session_env)
        print(json.dumps(record, indent=2))
    else:
        stack.down()
        print(f"devstack in {args.state_dir} stopped")
    return 0


def cmd_demo(args) -> int:
    from bioimage_gateway.devstack.demo import run_demo

    return run_demo(_state_dir(args.state_dir), args.port)


def cmd_hub_config_path(args) -> int:
    from importlib import resources

    print(resources.files("bioimage_gateway.hub_config").joinpath("jupyterhub_config.py"))
    return 0


def cmd_settings(args) -> int:
    from bioimage_gateway.settings import SettingsError, json_schema_text, load_settings

    if args.action == "schema":
        sys.stdout.write(json_schema_text())
        return 0
    try:
        load_settings(args.file)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.file}: valid")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bioimage-gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("devstack", help="start or stop the local Slurm stack")
    dev.add_argument("action", choices=["up", "down"])
    dev.add_argument("--state-dir", required=True)
    dev.add_argument("--session-env", help="prefix of the session environment (default: this one)")
    dev.set_defaults(func=cmd_devstack)

    demo = sub.add_parser("demo", help="run the whole gateway locally, in the foreground")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--state-dir")
    demo.set_defaults(func=cmd_demo)

    hub = sub.add_parser("hub-config-path", help="print the path of jupyterhub_config.py")
    hub.set_defaults(func=cmd_hub_config_path)

    settings = sub.add_parser("settings", help="check a gateway.yaml, or print its JSON schema")
    settings.add_argument("action", choices=["check", "schema"])
    settings.add_argument("file", nargs="?", default=None)
    settings.set_defaults(func=cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RuntimeError as exc:
        print(f"bioimage-gateway: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
