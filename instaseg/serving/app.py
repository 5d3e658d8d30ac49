"""The FastAPI application: routes that adapt HTTP to the serving library, and the wiring in `create_app`.

Routes (OpenAPI schema at `/openapi.json`, browsable at `/docs`):

    POST /v1/predict          one image -> instances
    POST /v1/predict/batch    several images -> instances per image
    GET  /v1/models           registered models: versions, roles, categories, input limits, live state,
                              quality-gate and automatic canary decisions
    GET  /v1/models/{name}
    POST /v1/embeddings       one image -> its SAM embedding id (cached; prompting.py)
    POST /v1/segment          prompts (points, boxes) against an embedding id or an image -> masks
    GET  /healthz             the process is up (no model needed)
    GET  /readyz              200 once every deployed model has a production version loaded and warm, else 503
    GET  /metrics             Prometheus text format

Errors are JSON `{"error": {"status", "kind", "message"}}` (errors.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from instaseg import __version__
from instaseg.serving.auth import Authenticator
from instaseg.serving.canary import CanaryAnalyst
from instaseg.serving.config import ServingConfig
from instaseg.serving.deployments import DeploymentManager
from instaseg.serving.errors import NotFound, ServiceError
from instaseg.serving.http_inputs import (
    merge_options,
    read_embedding_image,
    read_predict_inputs,
    read_segment_request,
)
from instaseg.serving.limits import DecodedImage, decode_image_bytes, set_decompression_limit
from instaseg.serving.metrics import ServingMetrics
from instaseg.serving.middleware import BodyLimitMiddleware, MetricsMiddleware
from instaseg.serving.model_listing import list_models
from instaseg.serving.prompting import Embedded, Prompts, PromptService
from instaseg.serving.registry import ModelVersion, open_registry
from instaseg.serving.sampling import PredictionSampler
from instaseg.serving.schemas import (
    BatchPredictRequest,
    BatchPredictResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    HealthResponse,
    ModelOut,
    ModelsResponse,
    PredictQuery,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
    SegmentRequest,
    SegmentResponse,
    instances_to_json,
)
from instaseg.serving.served import ServedModel
from instaseg.serving.service import InferenceService, RawImage, Served
from instaseg.serving.shadow import ShadowRunner

__all__ = ["create_app"]

_log = logging.getLogger(__name__)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (
            400,
            "bad input: corrupt / truncated / empty image, malformed JSON or options, path outside the root",
        ),
        (401, "API key missing or invalid (when keys are enabled)"),
        (404, "unknown model"),
        (413, "request body, image pixel count or batch size over the limit"),
        (415, "not an image, or an image format / content type that is not accepted"),
        (429, "rate limit of the API key exceeded; see Retry-After"),
        (503, "model not loaded, overloaded, timed out, or failed on this request"),
    )
}
_UPLOAD_BODY = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {"image": {"type": "string", "format": "binary"}},
            "required": ["image"],
        }
    }
}
_BATCH_UPLOAD_BODY = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            "required": ["images"],
        }
    }
}


def create_app(
    config: ServingConfig,
    load_model: Callable[[ModelVersion, ServingConfig, ServingMetrics], ServedModel] | None = None,
) -> FastAPI:
    """Build the service for `config`. `load_model(entry, config, metrics)` makes a warmed-up `ServedModel`
    (default `load_served_model`); the registry must exist (`instaseg models register` creates it)."""
    registry = open_registry(config.registry, create=False)  # a folder or a postgresql:// URL
    metrics = ServingMetrics()
    load = load_model or load_served_model
    deployments = DeploymentManager(
        registry,
        lambda entry: load(entry, config, metrics),
        metrics,
        poll_s=config.registry_poll_s,
        default_model=config.default_model,
        unload_timeout_s=config.shutdown_timeout_s,
        shadow_versions=config.shadow.versions if config.shadow.share > 0 else None,
    )
    sampling = config.sampling
    sampler = (
        PredictionSampler(
            sampling.folder,
            sampling.share,
            sampling.max_bytes,
            sampling.segment_bytes,
            sampling.include_images,
        )
        if sampling.share > 0
        else None
    )
    analyst = (
        CanaryAnalyst(config.canary, registry, deployments, metrics, config.device)
        if config.canary.enabled
        else None
    )
    observe = analyst.observe if analyst is not None else None
    shadow = (
        ShadowRunner(
            config.shadow,
            metrics,
            sampler,
            on_outcome=(lambda served: observe(served.name)) if observe is not None else None,
        )
        if config.shadow.share > 0
        else None
    )
    service = InferenceService(config, deployments, metrics, sampler, shadow, observe)
    authenticator = (
        Authenticator(config.auth.keys_file, config.auth.requests_per_minute, config.auth.burst)
        if config.auth.enabled
        else None
    )
    promptable = config.promptable
    prompting = (
        PromptService(
            promptable.checkpoint, promptable.cache_bytes, metrics, config.device, promptable.batch_size
        )
        if promptable.enabled
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Process-wide settings, put back at shutdown so that an embedded service leaves no trace.
        pillow_limit = set_decompression_limit(config.limits.max_image_pixels)
        torch_threads = torch.get_num_threads()
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        deployments.start()
        yield
        # Uvicorn has already let in-flight requests finish. The analysis stops first (it must not reload
        # models), then the models are unloaded (queued images, shadow ones too, finish), then the shadow
        # comparisons still waiting are recorded.
        if analyst is not None:
            await run_in_threadpool(analyst.close)
        await run_in_threadpool(deployments.stop)
        if shadow is not None:
            await run_in_threadpool(shadow.close, config.shutdown_timeout_s)
        torch.set_num_threads(torch_threads)
        set_decompression_limit(pillow_limit)

    app = FastAPI(
        title="instaseg",
        version=__version__,
        description="Instance segmentation (Mask R-CNN) as an HTTP service.",
        lifespan=lifespan,
    )
    app.state.authenticator = authenticator
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # added last: outermost, sees the 413s too
    _add_error_handlers(app, metrics)

    async def run_prediction(request: Request, query: PredictQuery, batch: bool) -> tuple[Served, list[dict]]:
        inputs = await read_predict_inputs(request, config, batch=batch)
        options = merge_options(query.model_dump(exclude_unset=True, exclude={"model"}), inputs.options)
        served = service.route(inputs.model or query.model)
        request.state.served = served
        route = "/v1/predict/batch" if batch else "/v1/predict"
        served, results = await service.predict(served, inputs.images, options, route, request.state.started)
        request.state.served = served
        for result, image in zip(results, inputs.images, strict=True):
            result["name"] = image.name
        return served, results

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_require_api_key)], responses=_ERRORS)

    @v1.post(
        "/predict",
        response_model=PredictResponse,
        summary="Segment one image",
        openapi_extra={"requestBody": {"content": _UPLOAD_BODY, "required": True}},
    )
    async def predict(request: Request, query: Annotated[PredictQuery, Query()]) -> dict:
        served, results = await run_prediction(request, query, batch=False)
        return {**results[0], "model": served.ref()}

    @v1.post(
        "/predict/batch",
        response_model=BatchPredictResponse,
        summary="Segment several images in one request",
        openapi_extra={"requestBody": {"content": _BATCH_UPLOAD_BODY, "required": True}},
    )
    async def predict_batch(request: Request, query: Annotated[PredictQuery, Query()]) -> dict:
        served, results = await run_prediction(request, query, batch=True)
        total_ms = max(result["timing"]["total_ms"] for result in results)
        return {"model": served.ref(), "results": results, "total_ms": total_ms}

    @v1.get("/models", response_model=ModelsResponse, summary="Registered models and what serves them")
    async def models() -> dict:
        listed = await run_in_threadpool(list_models, registry, deployments, config, None)
        return {"default_model": config.default_model, "models": listed}

    @v1.get("/models/{name}", response_model=ModelOut, summary="One registered model")
    async def model_detail(name: str) -> dict:
        return (await run_in_threadpool(list_models, registry, deployments, config, name))[0]

    def prompt_service() -> PromptService:
        if prompting is None:
            raise NotFound(
                "the promptable routes are switched off here (serving config: promptable.enabled)",
                "no_promptable_model",
            )
        return prompting

    async def embed(image_bytes: RawImage) -> tuple[DecodedImage, Embedded, float]:
        began = time.perf_counter()
        decoded = await run_in_threadpool(
            decode_image_bytes, image_bytes.data, image_bytes.source, config.limits
        )
        decode_seconds = time.perf_counter() - began
        embedded = await run_in_threadpool(prompt_service().embed, decoded)
        return decoded, embedded, decode_seconds

    def embedding_body(embedded: Embedded, decode_s: float, prompt_s: float, started: float) -> dict:
        height, width = embedded.entry.original_size
        return {
            "embedding_id": embedded.embedding_id,
            "cached": embedded.cached,
            "image_size": {"height": height, "width": width},
            "model": prompt_service().describe(),
            "timing": {
                "decode_ms": decode_s * 1000,
                "encode_ms": embedded.encode_seconds * 1000,
                "prompt_ms": prompt_s * 1000,
                "total_ms": (time.perf_counter() - started) * 1000,
            },
        }

    @v1.post(
        "/embeddings",
        response_model=EmbeddingResponse,
        summary="Embed an image for promptable segmentation (SAM / MobileSAM); cached by its bytes",
        openapi_extra={
            "requestBody": {
                "content": {
                    **_UPLOAD_BODY,
                    "application/json": {"schema": EmbeddingRequest.model_json_schema()},
                },
                "required": True,
            }
        },
    )
    async def embeddings(request: Request) -> dict:
        prompt_service()
        _, embedded, decode_seconds = await embed(await read_embedding_image(request, config))
        return embedding_body(embedded, decode_seconds, 0.0, request.state.started)

    @v1.post(
        "/segment",
        response_model=SegmentResponse,
        summary="Masks for point / box prompts against an embedding id or an image (batched prompts)",
        openapi_extra={
            "requestBody": {
                "content": {"application/json": {"schema": SegmentRequest.model_json_schema()}},
                "required": True,
            }
        },
    )
    async def segment(request: Request) -> dict:
        prompter = prompt_service()
        parsed, image_bytes = await read_segment_request(request, config)
        if image_bytes is None:
            embedded, decode_seconds = prompter.lookup(parsed.embedding_id), 0.0
        else:
            _, embedded, decode_seconds = await embed(image_bytes)
        prompts = Prompts(parsed.points, parsed.labels, parsed.boxes, parsed.multimask)
        began = time.perf_counter()
        found = await run_in_threadpool(prompter.segment, embedded.entry, prompts)
        prompt_seconds = time.perf_counter() - began
        instances = instances_to_json(found, {1: "object"}, parsed.mask_format)
        for item, index, stability in zip(
            instances,
            found.fields["prompt_index"].tolist(),
            found.fields["stability_score"].tolist(),
            strict=True,
        ):
            item.update(prompt_index=index, stability_score=stability)
        return {
            **embedding_body(embedded, decode_seconds, prompt_seconds, request.state.started),
            "instances": instances,
        }

    app.include_router(v1)

    @app.get("/healthz", response_model=HealthResponse, summary="The process is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        summary="Models loaded and warm",
        responses={503: {"model": ReadyResponse, "description": "not ready yet"}},
    )
    async def readyz() -> JSONResponse:
        ready, reason = deployments.is_ready()
        states = deployments.states()
        listed = []
        for name, active in sorted(deployments.active().items()):
            for role, served in (("production", active.production), ("canary", active.canary)):
                if served is not None:
                    state = states.get((name, served.version), "serving")
                    listed.append({"name": name, "version": served.version, "role": role, "state": state})
        body = ReadyResponse(ready=ready, reason=reason, models=listed).model_dump()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    app.openapi = lambda: _openapi(app)
    return app


_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")


async def _require_api_key(
    request: Request,
    _bearer: Annotated[Any, Depends(_BEARER)],
    _header: Annotated[Any, Depends(_KEY_HEADER)],
) -> None:
    """With API keys enabled: 401 without a valid key, 429 over its rate limit. The two security
    dependencies only document the accepted headers in the OpenAPI schema."""
    authenticator: Authenticator | None = request.app.state.authenticator
    if authenticator is not None:
        request.state.api_key = authenticator.authenticate(
            request.headers.get("authorization"), request.headers.get("x-api-key")
        )


def load_served_model(entry: ModelVersion, config: ServingConfig, metrics: ServingMetrics) -> ServedModel:
    """Load a registered version and warm it up (its first call allocates); unloads it again on failure."""

    def on_batch(size: int, seconds: float) -> None:
        metrics.observe_batch(entry.name, str(entry.version), size, seconds)

    served = ServedModel.load(entry, config, on_batch)
    try:
        seconds = served.warm_up(config.request_timeout_s * 10)
    except BaseException:
        served.close()
        raise
    _log.info("loaded %s v%d (warm-up %.2f s)", entry.name, entry.version, seconds)
    return served


def _add_error_handlers(app: FastAPI, metrics: ServingMetrics) -> None:
    def labels(request: Request) -> tuple[str, str]:
        served = getattr(request.state, "served", None)
        return served.labels if served is not None else ("", "")

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.error(exc.kind, *labels(request))
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in exc.errors()
        )
        metrics.error("invalid_request", *labels(request))
        body = {"error": {"status": 400, "kind": "invalid_request", "message": message}}
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        metrics.error(kind, *labels(request))
        body = {"error": {"status": exc.status_code, "kind": kind, "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, plus the JSON request bodies of the predict routes (read by hand, so that one route
    takes both multipart uploads and JSON)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in (("/v1/predict", PredictRequest), ("/v1/predict/batch", BatchPredictRequest)):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
            content = schema["paths"][path]["post"]["requestBody"]["content"]
            content["application/json"] = {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        app.openapi_schema = schema
    return app.openapi_schema
