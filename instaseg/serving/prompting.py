"""Promptable segmentation in the service: `POST /v1/embeddings` and `POST /v1/segment`, with the bundled
promptable model or a SAM / MobileSAM checkpoint (`instaseg.models.load_promptable`).

An image is embedded once (the image encoder: seconds on a CPU) and its embedding kept in an LRU cache with a
byte cap, keyed by the SHA-256 of the uploaded bytes: that key is the `embedding_id` a client sends back with
its prompts, and the same upload embedded twice hits the cache. Prompts then decode against the cached
embedding (milliseconds each; many prompts in one batched decoder call). One model call runs at a time (a
lock): the encoder alone keeps every intra-op thread busy, and `SamPredictor` holds per-image state.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from instaseg.models.default_model import DEFAULT_PROMPTABLE_MODEL
from instaseg.models.loading import PromptableModel, load_promptable
from instaseg.models.model_file import WeightsError
from instaseg.models.promptable.refiner import DetailFeatures
from instaseg.models.sam.checkpoint import SamCheckpointError
from instaseg.models.sam.predictor import PromptError, SamPredictor
from instaseg.serving.errors import BadInput, NotFound
from instaseg.serving.limits import DecodedImage
from instaseg.serving.metrics import ServingMetrics
from instaseg.structures.instances import Instances

__all__ = ["CachedEmbedding", "Embedded", "EmbeddingCache", "PromptService", "Prompts"]


@dataclass(frozen=True)
class CachedEmbedding:
    """One image's `(1, 256, h, w)` float32 embedding, its original `(H, W)` and resized input `(h, w)`, and
    the model's `detail` features for its second stage (`SamPredictor.detail`; None for SAM)."""

    embedding: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    detail: DetailFeatures | None = None

    @property
    def nbytes(self) -> int:
        detail = self.detail.nbytes if self.detail is not None else 0
        return self.embedding.element_size() * self.embedding.nelement() + detail


class EmbeddingCache:
    """Least-recently-used embeddings, at most `max_bytes` of tensors; hits, misses, evictions and the bytes
    held are exported as metrics. Thread-safe."""

    def __init__(self, max_bytes: int, metrics: ServingMetrics) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self._entries: OrderedDict[str, CachedEmbedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedEmbedding | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        self.metrics.embedding_lookup(hit=entry is not None)
        return entry

    def put(self, key: str, entry: CachedEmbedding) -> None:
        """Keep `entry` under `key`, evicting the least recently used ones until it fits."""
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous.nbytes
            evicted = 0
            while self._entries and self._bytes + entry.nbytes > self.max_bytes:
                _, oldest = self._entries.popitem(last=False)
                self._bytes -= oldest.nbytes
                evicted += 1
            self._entries[key] = entry
            self._bytes += entry.nbytes
            held = self._bytes
        self.metrics.embedding_cache_changed(held, evicted)


@dataclass(frozen=True)
class Embedded:
    """`PromptService.embed`'s answer: the embedding id, the embedding, whether it came from the cache (no
    encoder call), and the encoder's wall time (0 when cached)."""

    embedding_id: str
    entry: CachedEmbedding
    cached: bool
    encode_seconds: float


@dataclass(frozen=True)
class Prompts:
    """The prompts of one `/v1/segment` call, in original-image pixels (`SamPredictor.predict`'s shapes):
    points `(N, 2)` with labels `(N,)` (1 foreground, 0 background), shared by every box, or `(B, N, 2)` /
    `(B, N)` one set per prompt; boxes `(B, 4)` x1y1x2y2; `multimask`: three masks per prompt, else one."""

    points: list | None = None
    labels: list | None = None
    boxes: list | None = None
    multimask: bool = True


class PromptService:
    """A promptable model behind the two routes (see the module docstring): `checkpoint` None is the bundled
    `nuclei_promptable`; a `.onnx` path names the two graphs of a SAM export, run on ONNX Runtime (CPU)."""

    def __init__(
        self,
        checkpoint: str | Path | None,
        cache_bytes: int,
        metrics: ServingMetrics,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        try:
            self.model: PromptableModel = load_promptable(checkpoint, device)
        except (SamCheckpointError, WeightsError, FileNotFoundError) as error:
            raise ValueError(f"promptable.checkpoint: {error}") from None
        self.name = Path(checkpoint).name if checkpoint is not None else DEFAULT_PROMPTABLE_MODEL
        self.cache = EmbeddingCache(cache_bytes, metrics)
        self.metrics = metrics
        self._predictor = SamPredictor(self.model, device=device, batch_size=batch_size)
        self._lock = threading.Lock()

    def describe(self) -> dict[str, str]:
        """What answers these routes, for responses: the checkpoint's file name and architecture."""
        return {"checkpoint": self.name, "arch": self.model.arch}

    def embed(self, image: DecodedImage) -> Embedded:
        """`image`'s embedding from the cache, or from the encoder (then cached)."""
        key = image.sha256
        cached = self.cache.get(key)
        if cached is not None:
            return Embedded(key, cached, True, 0.0)
        with self._lock:
            began = time.perf_counter()
            self._predictor.set_image(image.image)
            entry = CachedEmbedding(
                self._predictor.embedding.detach().clone(),
                self._predictor.original_size,
                self._predictor.input_size,
                self._predictor.detail,
            )
            seconds = time.perf_counter() - began
        self.metrics.observe_prompt_stage("encode", seconds)
        self.cache.put(key, entry)
        return Embedded(key, entry, False, seconds)

    def lookup(self, embedding_id: str) -> Embedded:
        """The cached embedding of `embedding_id`, or 404 (never made, or evicted: embed the image again)."""
        entry = self.cache.get(embedding_id)
        if entry is None:
            raise NotFound(
                f"embedding_id {embedding_id!r} is not in the cache (never made here, or evicted): POST the "
                "image to /v1/embeddings again, or send it with the prompts",
                "unknown_embedding",
            )
        return Embedded(embedding_id, entry, True, 0.0)

    def segment(self, entry: CachedEmbedding, prompts: Prompts) -> Instances:
        """Masks for `prompts` against `entry`: one batched decoder call (see `SamPredictor.predict`);
        scores are predicted IoUs, with `stability_score` and `prompt_index` fields. Bad prompts: 400."""
        with self._lock:
            began = time.perf_counter()
            self._predictor.set_embedding(
                entry.embedding, entry.original_size, entry.input_size, entry.detail
            )
            try:
                found = self._predictor.predict(
                    points=prompts.points,
                    labels=prompts.labels,
                    boxes=prompts.boxes,
                    multimask=prompts.multimask,
                )
            except PromptError as error:
                raise BadInput(str(error), "bad_prompt") from None
            self.metrics.observe_prompt_stage("decode", time.perf_counter() - began)
        return found
