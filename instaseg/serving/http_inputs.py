"""Read the images and options of a predict request from its body: multipart upload or JSON.

- `multipart/form-data`: file field `image` (`/v1/predict`) or one `images` field per image
  (`/v1/predict/batch`); options come from the query string.
- `application/json`: `PredictRequest` / `BatchPredictRequest` (schemas.py): base64 bytes or a path under the
  configured root; `options` in the body override the query string's, field by field.

The promptable routes read the same two kinds of body: `/v1/embeddings` an `image` file field or an
`EmbeddingRequest`; `/v1/segment` a `SegmentRequest`, or an `image` file field with the request (less its
image) as JSON text in a `prompts` field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request

from instaseg.serving.config import ServingConfig
from instaseg.serving.errors import BadInput, PayloadTooLarge, UnsupportedMedia
from instaseg.serving.limits import decode_base64, read_server_path
from instaseg.serving.schemas import (
    BatchPredictRequest,
    EmbeddingRequest,
    ImageInput,
    PredictOptions,
    PredictRequest,
    SegmentRequest,
)
from instaseg.serving.service import RawImage

__all__ = [
    "PredictInputs",
    "merge_options",
    "read_embedding_image",
    "read_predict_inputs",
    "read_segment_request",
]

# Parsing more parts than this is refused by the multipart parser itself; the batch limit is checked below
# (the body size limit bounds the total either way).
_MAX_MULTIPART_FILES = 10_000


@dataclass
class PredictInputs:
    """Images as received, the model named in the body (if any), and the options the body sets."""

    images: list[RawImage]
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


async def read_predict_inputs(request: Request, config: ServingConfig, batch: bool) -> PredictInputs:
    """The images (as bytes), the model name and the body's explicitly set options of a predict request."""
    content_type = _content_type(request)
    if content_type == "multipart/form-data":
        inputs = await _read_multipart(request, config, batch)
    elif content_type == "application/json":
        inputs = await _read_json(request, config, batch)
    else:
        field = "'images' file fields" if batch else "an 'image' file field"
        raise UnsupportedMedia(
            f"Content-Type {content_type or '(none)'!r} is not accepted: send multipart/form-data with "
            f"{field}, or application/json",
            "unsupported_content_type",
        )
    return inputs


async def read_embedding_image(request: Request, config: ServingConfig) -> RawImage:
    """The image of a `/v1/embeddings` request."""
    content_type = _content_type(request)
    if content_type == "multipart/form-data":
        async with request.form(max_files=2) as form:
            return await _single_upload(form, "image")
    if content_type == "application/json":
        parsed = _parse_json(await request.body(), EmbeddingRequest)
        return await _json_image(parsed.image, "image", config)
    raise _unsupported(content_type, "an 'image' file field")


async def read_segment_request(
    request: Request, config: ServingConfig
) -> tuple[SegmentRequest, RawImage | None]:
    """The prompts of a `/v1/segment` request, and its image when it sends one instead of an embedding id."""
    content_type = _content_type(request)
    if content_type == "multipart/form-data":
        async with request.form(max_files=2) as form:
            image = await _single_upload(form, "image")
            prompts = form.get("prompts")
            if not isinstance(prompts, str):
                raise BadInput(
                    "multipart body needs a 'prompts' text field (the segment request as JSON)",
                    "missing_prompts",
                )
        text = prompts.encode()
        parsed = _parse_json(text, SegmentRequest, extra={"image": {"path": "(the uploaded file)"}})
        return parsed.model_copy(update={"image": None}), image
    if content_type == "application/json":
        parsed = _parse_json(await request.body(), SegmentRequest)
        image = await _json_image(parsed.image, "image", config) if parsed.image is not None else None
        return parsed, image
    raise _unsupported(content_type, "an 'image' file field and a 'prompts' field")


def merge_options(query: dict[str, Any], body: dict[str, Any]) -> PredictOptions:
    """The options the query string sets, overridden field by field by those the JSON body sets."""
    try:
        return PredictOptions(**{**query, **body})
    except ValidationError as exc:
        raise BadInput(f"invalid options: {_describe(exc)}", "invalid_request") from None


async def _read_multipart(request: Request, config: ServingConfig, batch: bool) -> PredictInputs:
    field = "images" if batch else "image"
    # As a context manager the form closes its spooled upload files when done (large parts go to disk).
    async with request.form(max_files=_MAX_MULTIPART_FILES) as form:
        uploads = form.getlist(field)
        if not uploads:
            raise BadInput(
                f"multipart body has no file field {field!r} (fields: {sorted(form.keys())})", "missing_image"
            )
        _check_count(len(uploads), config)
        if not batch and len(uploads) > 1:
            raise BadInput(
                "multipart body has several 'image' fields; use /v1/predict/batch for several",
                "too_many_images",
            )
        images = []
        for index, upload in enumerate(uploads):
            source = f"{field}[{index}]" if batch else field
            if not isinstance(upload, UploadFile):
                raise BadInput(
                    f"multipart field {source} must be a file upload, not a text value", "missing_image"
                )
            if upload.filename:
                source = f"{source} ({upload.filename})"
            images.append(RawImage(await upload.read(), source, upload.filename))
    return PredictInputs(images=images)


async def _read_json(request: Request, config: ServingConfig, batch: bool) -> PredictInputs:
    parsed = _parse_json(await request.body(), BatchPredictRequest if batch else PredictRequest)
    entries = parsed.images if batch else [parsed.image]
    _check_count(len(entries), config)
    images = [
        await _json_image(entry, f"images[{i}]" if batch else "image", config)
        for i, entry in enumerate(entries)
    ]
    options = parsed.options.model_dump(exclude_unset=True) if parsed.options is not None else {}
    return PredictInputs(images=images, model=parsed.model, options=options)


async def _json_image(entry: ImageInput, source: str, config: ServingConfig) -> RawImage:
    if entry.path is not None:
        source = f"{source}.path"
        data = await run_in_threadpool(read_server_path, config.path_root, entry.path, source, config.limits)
    else:
        source = f"{source}.image_base64"
        data = decode_base64(entry.image_base64, source, config.limits)
    return RawImage(data, source, entry.name)


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _unsupported(content_type: str, field: str) -> UnsupportedMedia:
    return UnsupportedMedia(
        f"Content-Type {content_type or '(none)'!r} is not accepted: send multipart/form-data with {field}, "
        "or application/json",
        "unsupported_content_type",
    )


def _parse_json(raw: bytes, schema: type[Any], extra: dict[str, Any] | None = None) -> Any:
    """`raw` JSON validated by the pydantic `schema`; `extra` keys are added to a JSON object first (a
    multipart upload standing in for a body field). 400 naming the field otherwise."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"the JSON body does not parse: {exc}", "bad_json") from None
    if extra and isinstance(data, dict):
        data = {**data, **extra}
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"invalid JSON body: {_describe(exc)}", "invalid_request") from None


async def _single_upload(form: Any, field: str) -> RawImage:
    """The one file of multipart `field`: 400 when it is missing, repeated, or a text value."""
    uploads = form.getlist(field)
    if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
        raise BadInput(
            f"multipart body needs exactly one file field {field!r} (fields: {sorted(form.keys())})",
            "missing_image",
        )
    upload = uploads[0]
    source = f"{field} ({upload.filename})" if upload.filename else field
    return RawImage(await upload.read(), source, upload.filename)


def _check_count(count: int, config: ServingConfig) -> None:
    """Refuse a request with more images than `limits.max_batch_images`, before any of them is read."""
    if count > config.limits.max_batch_images:
        raise PayloadTooLarge(
            f"{count} images in one request, over the limit of {config.limits.max_batch_images}",
            "batch_too_large",
        )


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'body'}: {item['msg']}" for item in error.errors()
    )
