"""`instaseg slo rules`: Prometheus recording and alerting rules generated from the serving config's SLOs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "slo",
        help="service-level objectives: Prometheus rules from the serving config",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="slo_command", required=True, metavar="ACTION")
    rules = actions.add_parser(
        "rules",
        help="print the recording and alerting rules (instaseg slo rules --config serve.yaml > rules.yml)",
        description="Recording rules (error and slow-request ratios, burn rates per window) and alerts "
        "(multi-window burn rates of each model's SLOs, restarts, queue saturation, drift, bad input, "
        "registry, canary rollbacks) for the SLOs in the serving config's `slo` section. Every model with "
        "an SLO must be deployed in the registry. See docs/operations.md.",
    )
    rules.add_argument("--config", required=True, type=Path, help="serving config YAML with an slo section")
    rules.add_argument("--registry", help="model registry (default: the config's registry)")
    rules.add_argument(
        "--job", default="instaseg", help="Prometheus job name that scrapes the service (default instaseg)"
    )
    rules.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="divide every window and duration by this (fire drills and tests: 120 turns 1 h into 30 s); "
        "default 1",
    )
    rules.add_argument("--out", type=Path, help="write the rules here instead of printing them")
    rules.set_defaults(func=run_rules)


def run_rules(args: argparse.Namespace) -> int:
    from instaseg.io.atomic import atomic_write
    from instaseg.serving.config import serving_config
    from instaseg.serving.registry import open_registry
    from instaseg.serving.slo import prometheus_rules, rules_yaml

    config = serving_config(args.config, registry=args.registry)
    registry = open_registry(config.registry, create=False)
    try:
        deployed = [d.name for d in registry.deployments() if d.production is not None]
    finally:
        registry.close()
    text = rules_yaml(prometheus_rules(config, deployed, job=args.job, time_scale=args.time_scale))
    if args.out is None:
        sys.stdout.write(text)
    else:
        with atomic_write(args.out, "w") as handle:
            handle.write(text)
    return 0
