"""`instaseg serve`: run the HTTP inference service (see docs/serving.md), or create an API key for it.

With neither --config nor --registry it serves the bundled nuclei model on 127.0.0.1:8000, from the embedded
per-user registry $XDG_DATA_HOME/instaseg/registry (default ~/.local/share/instaseg/registry), created on
first use."""

from __future__ import annotations

import argparse
from pathlib import Path

# `instaseg.export.onnx_export.BACKENDS`, restated so that --help needs no import of torch
# (tests/cli/test_cli_help.py checks that the two agree).
BACKENDS = ("torch", "onnx")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP inference service",
        description=__doc__ + " Command-line options override the config file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="serving config YAML (see docs/serving.md)")
    parser.add_argument(
        "--registry",
        help="model registry folder (overrides the config's 'registry'; default without --config: the "
        "embedded per-user registry with the bundled model)",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--device", help="torch device for the models, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--default-model", help="model used when a request names none")
    parser.add_argument("--window-ms", type=float, help="dynamic batching window in ms (default 10)")
    parser.add_argument("--max-batch-size", type=int, help="images per model call; 1 turns batching off")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="torch (default), or onnx: checkpoints exported once to ONNX and run by ONNX Runtime (CPU)",
    )
    keys = parser.add_argument_group("API keys")
    keys.add_argument(
        "--new-api-key",
        metavar="NAME",
        help="create a key called NAME, store its hash in the keys file, print the key once, and exit",
    )
    keys.add_argument("--keys-file", type=Path, help="API keys file (default: the config's auth.keys_file)")
    keys.add_argument("--requests-per-minute", type=float, help="rate limit of the new key")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from instaseg.serving.auth import add_api_key
    from instaseg.serving.config import ConfigError, serving_config
    from instaseg.serving.server import run_server

    if args.new_api_key is not None:
        keys_file = args.keys_file
        if keys_file is None and args.config is not None:
            keys_file = serving_config(args.config, args.registry).auth.keys_file
        if keys_file is None:
            raise ConfigError("--new-api-key needs --keys-file or a config with auth.keys_file")
        print(add_api_key(keys_file, args.new_api_key, args.requests_per_minute))
        return 0
    config = serving_config(
        args.config,
        registry=args.registry,
        host=args.host,
        port=args.port,
        device=args.device,
        default_model=args.default_model,
        window_ms=args.window_ms,
        max_batch_size=args.max_batch_size,
        backend=args.backend,
    )
    return run_server(config)
