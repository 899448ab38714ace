"""Command line: ``fhir-gateway serve | check-config | explain | demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import Config, load_config
from gateway.errors import ConfigError

DEFAULT_CONFIG = "/etc/fhir-gateway/config.yaml"


def _load(path: str, *, with_policies: bool = True) -> Config:
    """The validated config, its policy files compiled too; every problem at once, exit 1."""
    problems: list[str] = []
    cfg: Config | None = None
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        problems += exc.problems
    if cfg is not None and with_policies:
        from gateway.policy import load_policy_set

        try:
            load_policy_set(cfg.policies.paths)
        except ConfigError as exc:
            problems += exc.problems
    if problems or cfg is None:
        print(f"{path}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(1)
    return cfg


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.ops.logging import configure
    from gateway.server import run

    cfg = _load(args.config)
    configure(cfg.logging.level)
    return run(cfg)


def cmd_check_config(args: argparse.Namespace) -> int:
    _load(args.config)
    print(f"{args.config}: OK")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.policy.explain import run_explain

    cfg = _load(args.config)
    return run_explain(
        cfg.policies.paths, cfg.auth.claims, args.claims, args.resource, level=args.level
    )


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

    explain = sub.add_parser(
        "explain", help="show which policies match a resource for a caller, and the decision"
    )
    explain.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    explain.add_argument("--claims", required=True, help="JSON file with the token's claims")
    explain.add_argument("--level", choices=["patient", "user", "system"], default=None)
    explain.add_argument("resource", help="JSON file with the FHIR resource")
    explain.set_defaults(func=cmd_explain)

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
