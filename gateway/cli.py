"""Command line: ``fhir-gateway serve | check-config | demo``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.config import Config, load_config
from gateway.errors import ConfigError

DEFAULT_CONFIG = "/etc/fhir-gateway/config.yaml"


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.ops.logging import configure
    from gateway.server import serve

    cfg = _load(args.config)
    configure(cfg.logging.level)
    try:
        import uvloop  # optional: faster event loop when installed

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(cfg))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    _load(args.config)
    print(f"{args.config}: OK")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(
        Path(args.workdir), port=args.port, upstream_port=args.upstream_port, patients=args.patients
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhir-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file; list every problem")
    check.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser("demo", help="run sekmet-fhir with synthetic patients behind the gateway")
    demo.add_argument("--workdir", default=".demo")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--upstream-port", type=int, default=8090)
    demo.add_argument("--patients", type=int, default=20)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
