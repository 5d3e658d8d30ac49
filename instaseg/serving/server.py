"""Run the service with uvicorn: in the foreground (`instaseg serve`), or in a background thread on loopback
(`BackgroundServer`, for notebooks, tests and benchmarks).

Graceful shutdown is uvicorn's: on SIGTERM / SIGINT it stops accepting connections, lets in-flight requests
finish (up to `shutdown_timeout_s`), then runs the app's shutdown, which unloads the models after their
queued images are done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from instaseg.serving.app import create_app
from instaseg.serving.config import ServingConfig

__all__ = ["BackgroundServer", "run_server"]


def _uvicorn_config(app: FastAPI, config: ServingConfig, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=config.host,
        port=port,
        log_level=config.log_level,
        timeout_graceful_shutdown=max(1, round(config.shutdown_timeout_s)),
        access_log=False,  # the Prometheus metrics count every request; per-request lines would dominate logs
        lifespan="on",
    )


def run_server(config: ServingConfig) -> int:
    """Serve until SIGTERM / SIGINT; returns the exit code (0 after a clean shutdown)."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = uvicorn.Server(_uvicorn_config(create_app(config), config, config.port))
    server.run()
    return 0 if server.started else 1


class BackgroundServer:
    """The service on `config.host` in a daemon thread; `port=0` in the config picks a free port.

    Use as a context manager; `url` is the base URL once started. `stop()` shuts down gracefully.
    """

    def __init__(
        self, config: ServingConfig, app_factory: Callable[[ServingConfig], FastAPI] = create_app
    ) -> None:
        self.config = config
        self.app = app_factory(config)
        self.server = uvicorn.Server(_uvicorn_config(self.app, config, config.port))
        self._thread = threading.Thread(target=self.server.run, name="instaseg-server", daemon=True)
        self.url = ""

    def start(self, timeout_s: float = 60.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the instaseg server did not start within {timeout_s:g} s")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.config.host}:{port}"
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float | None = None) -> None:
        """Ask uvicorn to exit (as SIGTERM would) and wait for the thread."""
        self.server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
