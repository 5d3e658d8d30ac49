"""`instaseg models`: register model versions and choose which serve (production, canary), in the
registry that a running `instaseg serve` follows: `promote`, `rollback` and `set-canary` take effect within
a second, without a restart."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from instaseg.cli.options import add_deprecated_alias

if TYPE_CHECKING:
    from instaseg.serving.registry import Deployment


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
        "--category-names",
        nargs="+",
        metavar="NAME",
        help="names of the model's categories 1..K (default: the checkpoint's categories)",
    )
    add_deprecated_alias(register, "--classes", "--category-names", "category_names", nargs="+")
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
    promote.add_argument(
        "--force", action="store_true", help="promote even when the golden-set quality gate refuses (logged)"
    )
    promote.add_argument("--device", default="cpu", help="device for the quality gate's predictions")
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
    canary.add_argument(
        "--force",
        action="store_true",
        help="start the canary even when the golden-set quality gate refuses (logged)",
    )
    canary.add_argument("--device", default="cpu", help="device for the quality gate's predictions")
    canary.set_defaults(func=run_set_canary)

    golden = commands.add_parser(
        "set-golden",
        parents=[common],
        help="define the labelled golden set that promote and set-canary evaluate a candidate on first",
    )
    golden.add_argument("name")
    golden.add_argument("annotations", type=Path, help="COCO instances JSON (the golden ground truth)")
    golden.add_argument("images", type=Path, help="folder the annotations' image file_names are relative to")
    golden.add_argument(
        "--metric",
        choices=("mask_ap", "dsb", "pq"),
        default="mask_ap",
        help="what the gate compares: COCO mask AP (default), the DSB score or Panoptic Quality",
    )
    golden.add_argument(
        "--margin",
        type=float,
        default=0.01,
        help="refuse a candidate more than this below production, in the metric's units (default 0.01)",
    )
    golden.set_defaults(func=run_set_golden)


def run_register(args: argparse.Namespace) -> int:
    from instaseg.serving.registration import register_model

    entry = register_model(
        args.registry,
        args.name,
        args.checkpoint,
        reference_images=args.reference_images,
        class_names=args.category_names,
        description=args.description,
        reference_limit=args.reference_limit,
        device=args.device,
    )
    categories = ", ".join(c["name"] for c in entry.classes)
    drift = "yes" if entry.reference is not None else "no"
    print(f"registered {entry.name} v{entry.version} (categories: {categories}; drift reference: {drift})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from instaseg.serving.registry import format_registry, open_registry

    registry = open_registry(args.registry, create=False)
    if args.json:
        deployments = []
        for deployment in registry.deployments():
            listed = asdict(deployment)
            golden = registry.golden_set(deployment.name)
            if golden is not None:  # models without a golden set list as they did before the gate
                listed.update(golden_set=golden, quality_gates=registry.quality_gates(deployment.name))
            decisions = registry.canary_decisions(deployment.name)
            if decisions:  # likewise for models the automatic canary analysis never acted on
                listed.update(canary_decisions=decisions)
            deployments.append(listed)
        print(json.dumps(deployments, indent=2))
    else:
        print(format_registry(registry))
        gates = [(d.name, registry.quality_gates(d.name)) for d in registry.deployments()]
        for name, decisions in gates:
            for version, decision in sorted(decisions.items()):
                print(f"quality gate {name} v{version} ({decision['decided_at']}): {_gate_summary(decision)}")
        for deployment in registry.deployments():
            for version, decision in sorted(registry.canary_decisions(deployment.name).items()):
                action = decision["action"].replace("_", " ")
                print(
                    f"canary {deployment.name} v{version} ({decision['decided_at']}): {action} automatically "
                    f"({decision['reason']}): {decision['message']}"
                )
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from instaseg.serving.registry import open_registry

    registry = open_registry(args.registry, create=False)
    _gate(registry, args.name, args.version or registry.deployment(args.name).canary, args)
    _print(registry.promote(args.name, args.version))
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from instaseg.serving.registry import open_registry

    _print(open_registry(args.registry, create=False).rollback(args.name))
    return 0


def run_set_canary(args: argparse.Namespace) -> int:
    from instaseg.serving.registry import open_registry

    registry = open_registry(args.registry, create=False)
    _gate(registry, args.name, args.version, args)
    _print(registry.set_canary(args.name, args.version, args.share))
    return 0


def _print(deployment: Deployment) -> None:
    canary = (
        f"canary v{deployment.canary} ({deployment.canary_share:.0%})"
        if deployment.canary is not None
        else "no canary"
    )
    print(f"{deployment.name}: production v{deployment.production}, {canary}")


def run_set_golden(args: argparse.Namespace) -> int:
    from instaseg.serving.golden import define_golden_set
    from instaseg.serving.registry import open_registry

    registry = open_registry(args.registry, create=False)
    golden = define_golden_set(registry, args.name, args.annotations, args.images, args.metric, args.margin)
    print(
        f"golden set of {args.name}: {golden.annotations} (images in {golden.images}); "
        f"gate: {golden.metric}, margin {golden.margin:g}"
    )
    return 0


def _gate(registry: object, name: str, version: int | None, args: argparse.Namespace) -> None:
    """The golden-set quality gate before `version` gets traffic: prints both numbers; a refusal raises
    (`GateRefused`, exit code 2) and the registry is left as it was."""
    from instaseg.serving.golden import check_promotion

    if version is None:
        return
    decision = check_promotion(registry, name, version, force=args.force, device=args.device)
    if decision is not None:
        print(f"quality gate: {decision.message()}")


def _gate_summary(decision: dict) -> str:
    """One line of a stored `GateDecision`: the candidate's and production's numbers and the verdict."""
    candidate, production = decision["candidate"], decision["production"]
    text = f"{decision['metric']} {candidate['value']:.4f}"
    if production is not None:
        text += f" vs production v{production['version']} {production['value']:.4f}"
    verdict = "passed" if decision["passed"] else ("forced" if decision["forced"] else "refused")
    return f"{text} (margin {decision['margin']:g}): {verdict}"
