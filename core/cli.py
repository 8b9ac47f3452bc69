"""``bioimage-gateway``: the command line of the gateway and of its local stack."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def _state_dir(value: str | None) -> Path:
    """A given state directory (checked by ``devstack up``: root's alone), else a fresh private one."""
    return Path(value) if value else Path(tempfile.mkdtemp(prefix="bioimage-gateway-demo-"))


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


def _int_list(text: str | None):
    if text is None:
        return None
    return [int(v) if v.strip().isdigit() else v.strip() for v in text.split(",") if v.strip()]


def _staging_errors() -> tuple[type[Exception], ...]:
    """What staging commands report as one line on stderr (exit 1), not a traceback: their own
    errors, the catalogs' (not found, refused, unreachable) and unusable site settings."""
    from bioimage_gateway import staging
    from bioimage_gateway.catalogs.base import CatalogError
    from bioimage_gateway.settings import SettingsError

    return staging.StagingError, CatalogError, SettingsError


def cmd_stage(args) -> int:
    try:
        return _stage(args)
    except _staging_errors() as exc:
        print(f"bioimage-gateway stage: {exc}", file=sys.stderr)
        return 1


def _stage(args) -> int:
    from bioimage_gateway import staging

    if args.status:
        if any(v is not None for v in (args.levels, args.channels, args.timepoints, args.dest)) or args.background:
            print("bioimage-gateway stage: --status takes only an optional URL, key or path", file=sys.stderr)
            return 2
        found = staging.status(args.url) if args.url else staging.status()
        if not found:
            print("nothing staged", file=sys.stderr)
        for doc in found if isinstance(found, list) else [found]:
            eta = doc.get("eta_s")
            rate = doc.get("rate_bytes_per_s")
            print(f"{doc.get('key')}  {doc.get('state'):<11} {doc.get('objects_done', 0)}/{doc.get('objects_total', '?')} "
                  f"objects  {doc.get('bytes_done', 0)}/{doc.get('bytes_total', '?')} bytes"
                  + (f"  {rate / 1e6:.1f} MB/s" if rate else "")
                  + (f"  ETA {eta:.0f} s" if eta else "")
                  + f"  {doc.get('url')}  -> {doc.get('path')}")
        return 0
    if not args.url:
        print("bioimage-gateway stage: a URL is needed (or --status)", file=sys.stderr)
        return 2
    path = staging.stage(args.url, levels=_int_list(args.levels), channels=_int_list(args.channels),
                         timepoints=args.timepoints, dest=args.dest, background=args.background,
                         progress=sys.stderr.isatty())
    print(path)
    return 0


def cmd_evict(args) -> int:
    from bioimage_gateway import staging

    try:
        removed = staging.evict(args.target)
    except _staging_errors() as exc:
        print(f"bioimage-gateway evict: {exc}", file=sys.stderr)
        return 1
    for path in removed:
        print(f"removed {path}")
    return 0


def cmd_publish(args) -> int:
    from bioimage_gateway import staging

    try:
        url = staging.publish(args.local, args.url, overwrite=args.overwrite)
    except _staging_errors() as exc:
        print(f"bioimage-gateway publish: {exc}", file=sys.stderr)
        return 1
    print(url)
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

    stage = sub.add_parser("stage", help="copy (a selection of) a dataset onto scratch; print its path")
    stage.add_argument("url", nargs="?", help="irods://..., https://..., file:///... (an OME-Zarr or anything)")
    stage.add_argument("--levels", help="resolution levels: indexes or paths, comma-separated (0,2 or s2)")
    stage.add_argument("--channels", help="channels: indexes or names, comma-separated")
    stage.add_argument("--timepoints", help="a range A:B (B excluded) or one timepoint")
    stage.add_argument("--dest", help="stage into this directory instead of the cache")
    stage.add_argument("--background", action="store_true", help="run detached; see --status")
    stage.add_argument("--status", action="store_true", help="show staged and running datasets (or URL's)")
    stage.set_defaults(func=cmd_stage)

    evict = sub.add_parser("evict", help="remove staged copies of a URL, or one cache entry by key or path")
    evict.add_argument("target")
    evict.set_defaults(func=cmd_evict)

    publish = sub.add_parser("publish", help="upload results to iRODS, verified, with provenance")
    publish.add_argument("local")
    publish.add_argument("url", help="irods://ZONE/home/USER/...")
    publish.add_argument("--overwrite", action="store_true", help="replace what exists at URL")
    publish.set_defaults(func=cmd_publish)
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
