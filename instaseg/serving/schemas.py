"""Request and response bodies of the HTTP API (pydantic): they validate JSON input and document the API in
the OpenAPI schema at `/openapi.json`. Boxes are `[x1, y1, x2, y2]` in original-image pixels (x right, y down,
x2 / y2 exclusive); masks are COCO compressed RLE (`counts` a string, as pycocotools writes it) or polygons
(flat `[x1, y1, x2, y2, ...]` lists in the same pixel coordinates, one per connected part)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from instaseg.structures.instances import Instances

MaskFormat = Literal["rle", "polygon"]
Role = Literal["production", "canary"]


class PredictOptions(BaseModel):
    """Per-request options: the query parameters of the predict routes (with `model`, see `PredictQuery`), or
    `options` in a JSON body, which override the query string's field by field. The one definition of them."""

    model_config = ConfigDict(extra="forbid")

    score_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="drop instances scoring below this (default: the model's recommended operating point)",
    )
    max_detections: int = Field(100, ge=0, le=1000, description="keep at most this many, best first")
    mask_format: MaskFormat = Field("rle", description="'rle' (COCO compressed RLE) or 'polygon'")
    tiling: bool = Field(False, description="tile images larger than the service's tile_size")


class PredictQuery(PredictOptions):
    """The query string of the predict routes: the options, and the model to use. Unknown names are refused
    (a misspelt option would otherwise fall back to its default silently)."""

    model: str | None = Field(None, description="registered model name (default: the service's default)")


class ImageInput(BaseModel):
    """One image in a JSON body: base64 bytes or a path under the service's `path_root`, never both."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str | None = Field(None, description="PNG / JPEG / TIFF / WebP bytes, base64 (data URL ok)")
    path: str | None = Field(None, description="file path relative to the service's configured path_root")
    name: str | None = Field(None, max_length=256, description="a label echoed back in the response")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ImageInput:
        if (self.image_base64 is None) == (self.path is None):
            raise ValueError("give exactly one of 'image_base64' and 'path'")
        return self


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: ImageInput
    model: str | None = Field(None, description="registered model name (default: the service's default)")
    options: PredictOptions | None = None


class BatchPredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[ImageInput] = Field(..., min_length=1)
    model: str | None = None
    options: PredictOptions | None = None


class RleMask(BaseModel):
    format: Literal["rle"] = "rle"
    size: list[int] = Field(..., description="[height, width]")
    counts: str


class PolygonMask(BaseModel):
    format: Literal["polygon"] = "polygon"
    polygons: list[list[float]]


class InstanceOut(BaseModel):
    category_id: int = Field(..., description="dataset category id (COCO's word)")
    category_name: str
    score: float
    box: list[float] = Field(
        ..., description="[x1, y1, x2, y2] in image pixels (COCO's bbox is [x, y, w, h])"
    )
    area: int = Field(..., description="mask area in pixels")
    mask: RleMask | PolygonMask
    class_id: int = Field(
        ..., deprecated=True, description="old name of category_id (deprecated, kept for one release)"
    )
    class_name: str = Field(
        ..., deprecated=True, description="old name of category_name (deprecated, kept for one release)"
    )


class ModelRef(BaseModel):
    name: str
    version: int
    role: Role


class Timing(BaseModel):
    decode_ms: float
    queue_ms: float
    model_ms: float = Field(..., description="the whole model call, shared by `batch_size` images")
    postprocess_ms: float
    total_ms: float
    batch_size: int


class ImageSize(BaseModel):
    height: int
    width: int


class Thresholds(BaseModel):
    """The thresholds this result was made with: the request's, else the model's operating point."""

    score_threshold: float
    mask_threshold: float


class ImageResult(BaseModel):
    name: str | None = None
    input_sha256: str
    image_size: ImageSize
    instances: list[InstanceOut]
    thresholds: Thresholds
    timing: Timing


class PredictResponse(ImageResult):
    model: ModelRef


class BatchPredictResponse(BaseModel):
    model: ModelRef
    results: list[ImageResult]
    total_ms: float


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings` as JSON (multipart: an `image` file field)."""

    model_config = ConfigDict(extra="forbid")

    image: ImageInput


class SegmentRequest(BaseModel):
    """`POST /v1/segment`: prompts against a cached embedding (`embedding_id`) or an image sent along (it is
    embedded and cached first). Pixels of the original image; points are x, y."""

    model_config = ConfigDict(extra="forbid")

    embedding_id: str | None = Field(None, description="from POST /v1/embeddings (or an earlier segment)")
    image: ImageInput | None = None
    points: list[list[float]] | list[list[list[float]]] | None = Field(
        None, description="[[x, y], ...] one point set shared by every box, or one set per prompt"
    )
    labels: list[int] | list[list[int]] | None = Field(
        None, description="one per point: 1 foreground, 0 background"
    )
    boxes: list[list[float]] | None = Field(None, description="[[x1, y1, x2, y2], ...], one prompt each")
    multimask: bool = Field(True, description="three masks per prompt (ambiguous clicks), else one")
    mask_format: MaskFormat = "rle"

    @model_validator(mode="after")
    def _exactly_one_image(self) -> SegmentRequest:
        if (self.embedding_id is None) == (self.image is None):
            raise ValueError("give exactly one of 'embedding_id' and 'image'")
        return self


class PromptModelRef(BaseModel):
    checkpoint: str = Field(..., description="file name of the SAM / MobileSAM checkpoint")
    arch: str = Field(..., description="vit_t, vit_b, vit_l, vit_h")


class PromptTiming(BaseModel):
    decode_ms: float = Field(..., description="reading and decoding the uploaded image (0 for an id)")
    encode_ms: float = Field(..., description="the image encoder (0 when the embedding was cached)")
    prompt_ms: float = Field(0.0, description="the prompt decoder, all prompts of the call")
    total_ms: float


class EmbeddingResponse(BaseModel):
    embedding_id: str
    cached: bool = Field(..., description="the embedding was in the cache already (no encoder call)")
    image_size: ImageSize
    model: PromptModelRef
    timing: PromptTiming


class PromptInstanceOut(InstanceOut):
    prompt_index: int = Field(..., description="which prompt (box, or point set) this mask answers")
    stability_score: float = Field(..., description="SAM's stability score of the mask")


class SegmentResponse(EmbeddingResponse):
    instances: list[PromptInstanceOut] = Field(..., description="score = the predicted IoU")


class CategoryOut(BaseModel):
    id: int
    name: str


class LiveStats(BaseModel):
    """The last outcomes of this version in this process: the window the automatic canary analysis compares
    (requests served, and shadow calls for a shadow version)."""

    requests: int = Field(..., description="outcomes in the window, shadow calls included")
    errors: int
    error_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    mean_score: float | None
    shadow_requests: int = Field(..., description="of `requests`, the shadow calls (copies of production's)")
    agreements: int = Field(..., description="shadow calls compared with production")
    agreement: float | None = Field(
        ..., description="their mean matched-instance mask IoU with production (None: none compared)"
    )


class ModelVersionOut(BaseModel):
    version: int
    role: Literal["production", "canary", "inactive"]
    state: Literal["serving", "loading", "failed", "not_loaded"]
    categories: list[CategoryOut] = Field(..., description="model category k is categories[k - 1]")
    classes: list[CategoryOut] = Field(
        ..., deprecated=True, description="old name of categories (deprecated, kept for one release)"
    )
    architecture: dict[str, Any]  # the model's summary() and operating point, as registered
    has_drift_reference: bool
    description: str
    created_at: str
    sha256: str
    live: LiveStats | None = None
    # The latest golden-set quality-gate decision on this version (`golden.GateDecision`), if it had one.
    quality_gate: dict[str, Any] | None = None
    # The latest automatic canary decision on this version (`canary.CanaryDecision`: rolled_back with the
    # breached limit, promoted, promotion_refused), if the canary analysis made one.
    canary_decision: dict[str, Any] | None = None


class InputLimits(BaseModel):
    max_body_bytes: int
    max_image_pixels: int
    max_batch_images: int
    formats: list[str]


class ModelOut(BaseModel):
    name: str
    production_version: int | None
    canary_version: int | None
    canary_share: float
    shadow_version: int | None = Field(
        None, description="the version a share of production requests is copied to here (shadow traffic)"
    )
    input_limits: InputLimits
    versions: list[ModelVersionOut]


class ModelsResponse(BaseModel):
    default_model: str | None
    models: list[ModelOut]


class ErrorDetail(BaseModel):
    status: int
    kind: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyModel(BaseModel):
    name: str
    version: int
    role: Role
    state: Literal["serving", "loading", "failed"]


class ReadyResponse(BaseModel):
    ready: bool
    reason: str | None = None
    models: list[ReadyModel]


def instances_to_json(instances: Instances, class_names: dict[int, str], mask_format: str) -> list[dict]:
    """Instances (category-id labels) -> the API's instance objects; masks as COCO RLE or polygons."""
    if len(instances) == 0:
        return []
    height, width = instances.image_size
    boxes = instances.boxes.detach().float().cpu().tolist()
    labels = instances.labels.cpu().tolist()
    scores = instances.scores.detach().float().cpu().tolist()
    areas = instances.masks.area().cpu().tolist()
    if mask_format == "polygon":
        masks = [{"format": "polygon", "polygons": parts} for parts in instances.masks.polygons()]
    else:
        masks = [
            {"format": "rle", "size": [height, width], "counts": rle["counts"]}
            for rle in instances.masks.rles()
        ]
    names = [class_names.get(label, str(label)) for label in labels]
    return [
        # class_id / class_name: the old names of category_id / category_name, kept for one release.
        {
            "category_id": label,
            "category_name": name,
            "score": score,
            "box": box,
            "area": int(area),
            "mask": mask,
            "class_id": label,
            "class_name": name,
        }
        for label, name, score, box, area, mask in zip(
            labels, names, scores, boxes, areas, masks, strict=True
        )
    ]
