"""Two ASGI middlewares: request metrics (outermost, sees every response) and the request body size limit."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from instaseg.serving.errors import PayloadTooLarge
from instaseg.serving.metrics import ServingMetrics

__all__ = ["BodyLimitMiddleware", "MetricsMiddleware"]


class MetricsMiddleware:
    """Counts and times every HTTP request by route template, status and the model version that served it.

    Routes put the serving version in `request.state.served` (a `service.Served`); it is also returned to
    the client in the `X-Instaseg-Model`, `X-Instaseg-Version` and `X-Instaseg-Role` headers.
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state["started"] = started
        status = 500  # what the client gets when the app fails before answering

        async def send_with_version(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                served = state.get("served")
                if served is not None:
                    model, version = served.labels
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"x-instaseg-model", model.encode()),
                        (b"x-instaseg-version", version.encode()),
                        (b"x-instaseg-role", served.role.encode()),
                    ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_version)
        finally:
            route = scope.get("route")
            served = state.get("served")
            model, version = served.labels if served is not None else ("", "")
            self.metrics.observe_request(
                getattr(route, "path", "unmatched"), status, model, version, time.perf_counter() - started
            )


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413 as soon as a route reads its body: before any byte
    is read when `Content-Length` declares too much, else while streaming (chunked uploads). Either way it
    raises `PayloadTooLarge` from `receive`, so that the app's error handler answers and the metrics count
    it under its route and error kind like any other error."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        declared_bytes = int(declared) if declared is not None and declared.isdigit() else None
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared_bytes is not None and declared_bytes > self.max_bytes:
                raise PayloadTooLarge(
                    f"request body of {declared_bytes} bytes is over the limit of {self.max_bytes}",
                    "body_too_large",
                )
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(
                        f"request body is over the limit of {self.max_bytes} bytes", "body_too_large"
                    )
            return message

        await self.app(scope, limited_receive, send)
