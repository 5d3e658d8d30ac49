"""`instaseg models`: register model versions and choose which serve (production, canary), in the
registry that a running `instaseg serve` follows: `promote`, `rollback` and `set-canary` take effect within
a second, without a restart."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from instaseg.serving.registration import register_model
from instaseg.serving.registry import Deployment, format_registry, open_registry


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="manage the served model versions", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry", required=True, help="model registry: a folder (embedded SQLite) or a postgresql:// URL"
    )
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    register = commands.add_parser(
        "register", parents=[common], help="add a checkpoint as the next version of a model"
    )
    register.add_argument("name", help="model name: lower-case letters, digits, '_', '.', '-'")
    register.add_argument("checkpoint", type=Path, help="instaseg checkpoint (.pt) written by training")
    register.add_argument(
        "--reference-images",
        nargs="+",
        default=[],
        metavar="INPUT",
        help="validation images (files, folders, globs) for the drift reference statistics",
    )
    register.add_argument("--reference-limit", type=int, default=200, help="use at most this many images")
    register.add_argument(
        "--classes", nargs="+", metavar="NAME", help="class names 1..K (default: the checkpoint's categories)"
    )
    register.add_argument("--description", default="", help="free text shown by `list` and the API")
    register.add_argument("--device", default="cpu", help="device for the reference predictions")
    register.set_defaults(func=run_register)

    listing = commands.add_parser("list", parents=[common], help="list versions and their roles")
    listing.add_argument("--json", action="store_true", help="print the deployments as JSON")
    listing.set_defaults(func=run_list)

    promote = commands.add_parser(
        "promote", parents=[common], help="make the canary (or --version) the production version"
    )
    promote.add_argument("name")
    promote.add_argument("--version", type=int, help="version to promote (default: the current canary)")
    promote.set_defaults(func=run_promote)

    rollback = commands.add_parser(
        "rollback",
        parents=[common],
        help="drop the canary; without one, return production to the previous version",
    )
    rollback.add_argument("name")
    rollback.set_defaults(func=run_rollback)

    canary = commands.add_parser(
        "set-canary", parents=[common], help="send a share of the traffic to a candidate version"
    )
    canary.add_argument("name")
    canary.add_argument("version", type=int)
    canary.add_argument("--share", type=float, required=True, help="share of requests, 0..1 (e.g. 0.1)")
    canary.set_defaults(func=run_set_canary)


def run_register(args: argparse.Namespace) -> int:
    entry = register_model(
        args.registry,
        args.name,
        args.checkpoint,
        reference_images=args.reference_images,
        class_names=args.classes,
        description=args.description,
        reference_limit=args.reference_limit,
        device=args.device,
    )
    classes = ", ".join(c["name"] for c in entry.classes)
    drift = "yes" if entry.reference is not None else "no"
    print(f"registered {entry.name} v{entry.version} (classes: {classes}; drift reference: {drift})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry, create=False)
    if args.json:
        print(json.dumps([asdict(d) for d in registry.deployments()], indent=2))
    else:
        print(format_registry(registry))
    return 0


def run_promote(args: argparse.Namespace) -> int:
    _print(open_registry(args.registry, create=False).promote(args.name, args.version))
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    _print(open_registry(args.registry, create=False).rollback(args.name))
    return 0


def run_set_canary(args: argparse.Namespace) -> int:
    _print(open_registry(args.registry, create=False).set_canary(args.name, args.version, args.share))
    return 0


def _print(deployment: Deployment) -> None:
    canary = (
        f"canary v{deployment.canary} ({deployment.canary_share:.0%})"
        if deployment.canary is not None
        else "no canary"
    )
    print(f"{deployment.name}: production v{deployment.production}, {canary}")
