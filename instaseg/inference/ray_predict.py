"""Batch prediction on a Ray cluster (`instaseg predict --engine ray`): backlogs of millions of images.

Ray Data reads each file's bytes (`read_binary_files` with the paths; not `read_images`, which decodes and
may resize), and `map_batches` hands them to a pool of actors (`ActorPoolStrategy`). Each actor loads the
model once and runs a `Predictor` built as `instaseg predict` builds it (the same `load_model`, backend
choice, thresholds, tiling and post-processing), after decoding with `instaseg.io.images.load_image_bytes`,
so the results are those of `instaseg predict` on the same files. An actor runs `cpus_per_actor` torch
threads and reserves as many CPUs.

Output: part files in `out_dir` (`part-<run>-<n>.parquet`, or `.jsonl`), each written atomically by the
driver, one row per input: `path` (as read: an absolute path or a URL), `height`, `width`,
`input_sha256`, `model`, `model_sha256`, and the instances as `results.json` holds them: `category_ids`,
`scores`, `bboxes` (COCO `[x, y, w, h]` in image pixels), `masks` (COCO compressed RLE counts of an
`[height, width]` mask), by decreasing score; `error` is null, or why the image has no result (an unreadable
file, a model error, a batch lost twice with its Ray actor). Every input gets a row: nothing is dropped.

Resume: a rerun with the same `out_dir` skips the paths that already have a row for the same model (by its
sha256), errors included; delete those part files (or use a new folder) to try again.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instaseg.export.onnx_export import model_source_for_backend
from instaseg.inference.inputs import InputFailure, expand_inputs
from instaseg.inference.outputs import ensure_writable_folder
from instaseg.inference.postprocess import PostprocessOptions
from instaseg.inference.predictor import DEFAULT_TILING, Predictor

# The per-image errors and their wording are those of `instaseg predict`.
from instaseg.inference.runner import PER_IMAGE_ERRORS, _reason
from instaseg.inference.tiling import TilingOptions
from instaseg.inference.tta import TTAOptions
from instaseg.io.atomic import atomic_write
from instaseg.io.files import file_sha256
from instaseg.io.images import IMAGE_SUFFIXES, load_image_bytes, natural_sort_key, to_tensor
from instaseg.models.default_model import bundled_model_source
from instaseg.models.loading import ModelSource

__all__ = ["OUTPUT_FORMATS", "RayClusterError", "RayOptions", "RayPredictionSummary", "predict_with_ray"]

OUTPUT_FORMATS = ("parquet", "jsonl")
# Text files whose lines name the images (one path or URL a line; blank lines and '#' comments skipped).
LIST_SUFFIXES = (".txt", ".lst")
# Rows per part file: bounds the driver's memory and what a crash of the driver can lose.
ROWS_PER_PART = 1000
CONNECT_TIMEOUT_S = 5
IMAGES_PER_BLOCK = 100
LOST_BATCH = (
    "no result: the Ray task of this image's batch failed twice (its actor crashed, or the file could not "
    "be read); see the Ray logs"
)


class RayClusterError(ValueError):
    """The Ray cluster cannot be reached or started; the message names the address."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run. `address`: None starts a local Ray instance on this machine (unless this
    process is already connected to one); "auto" joins the cluster started here with `ray start`; or
    "host:port" of a head node / "ray://host:10001" (Ray Client). `actors`: model replicas; each reserves
    `cpus_per_actor` CPUs and runs that many torch threads."""

    address: str | None = None
    actors: int = 1
    cpus_per_actor: int = 1

    def __post_init__(self) -> None:
        if self.actors < 1 or self.cpus_per_actor < 1:
            raise ValueError(
                f"--actors and --cpus-per-actor must be >= 1, got {self.actors} and {self.cpus_per_actor}"
            )


@dataclass
class RayPredictionSummary:
    """What a run did: images predicted, error rows written, inputs skipped as already done, wall time."""

    out_dir: Path
    images: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        lines = [
            f"{self.images} images in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s), "
            f"{len(self.errors)} errors, {self.skipped} skipped (already in {self.out_dir})"
        ]
        lines.extend(f"  {path}: {reason}" for path, reason in self.errors[:20])
        if len(self.errors) > 20:
            lines.append(f"  ... and {len(self.errors) - 20} more (the error column of the output)")
        return "\n".join(lines)


def predict_with_ray(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    model: ModelSource = None,
    *,
    ray: RayOptions | None = None,
    device: str = "cpu",
    backend: str | None = None,
    postprocess: PostprocessOptions | None = None,
    tiling: TilingOptions | None = DEFAULT_TILING,
    tta: TTAOptions | None = None,
    batch_size: int = 1,
    output_format: str = "parquet",
) -> RayPredictionSummary:
    """Predict every image named by `inputs` on Ray and write one row per image into `out_dir`.

    `inputs`: files, folders (recursive), glob patterns, `.txt` / `.lst` files listing one path or URL a
    line, or fsspec URLs (`s3://bucket/prefix/`, `file:///data/*.png`; one file system per run).
    `model`, `device`, `backend`, `postprocess`, `tiling`, `tta` and `batch_size` mean what they mean for
    `instaseg predict` (`run_predict`); the model file must be readable on every node. Raises
    `RayClusterError` when the cluster cannot be reached, `ValueError` for bad arguments.
    """
    import ray as ray_module

    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    options = ray or RayOptions()
    _check_reachable(options.address)  # before any work: a wrong address is one clear error at once
    out_dir = Path(out_dir)
    ensure_writable_folder(out_dir)
    started = time.perf_counter()
    source = model_source_for_backend(model, backend) if not _is_model_object(model) else model
    model_name, model_sha256 = _model_identity(source)
    paths, protocol, failures = expand_sources(inputs)
    done = _paths_done(out_dir, model_sha256)
    todo = [p for p in paths if p not in done]
    summary = RayPredictionSummary(out_dir, skipped=len(paths) - len(todo))
    writer = _PartWriter(out_dir, output_format)
    common = {"model": model_name, "model_sha256": model_sha256}
    for failure in failures:
        if failure.source not in done:
            writer.add(_error_row(failure.source, failure.reason, **common))
            summary.errors.append((failure.source, failure.reason))
    if todo:
        started_here = _connect(ray_module, options.address)
        try:
            predictor_options = {
                "device": device,
                "postprocess": postprocess,
                "tiling": tiling,
                "tta": tta,
                "batch_size": batch_size,
            }
            for row in _run(ray_module, todo, protocol, source, predictor_options, options, common):
                writer.add(row)
                if row["error"] is None:
                    summary.images += 1
                else:
                    summary.errors.append((row["path"], row["error"]))
        finally:
            if started_here:
                ray_module.shutdown()
    writer.close()
    summary.seconds = time.perf_counter() - started
    return summary


def expand_sources(inputs: Sequence[str | Path]) -> tuple[list[str], str | None, list[InputFailure]]:
    """(image paths or URLs in input order, their fsspec protocol or None for local files, failures).

    Local paths expand as `instaseg predict` expands them (`expand_inputs`) and become absolute (Ray's
    workers do not share the driver's working directory); list files contribute their lines; URLs expand
    with fsspec (a folder: the image files under it; a pattern: its matches).
    """
    import fsspec

    paths: list[str] = []
    failures: list[InputFailure] = []
    protocols: set[str] = set()
    for raw in inputs:
        text = str(raw)
        if "://" in text:
            fs, root = fsspec.core.url_to_fs(text)
            protocols.add(_protocol(fs))
            found = _expand_url(fs, root)
            if not found:
                failures.append(InputFailure(text, "no image files at this URL"))
            paths.extend(fs.unstrip_protocol(p) for p in found)
        elif Path(text).suffix.lower() in LIST_SUFFIXES and Path(text).is_file():
            listed = _read_list(Path(text))
            if not listed:
                failures.append(InputFailure(text, "the list file names no images"))
            for line in listed:
                if "://" in line:
                    protocols.add(_protocol(fsspec.core.url_to_fs(line)[0]))
                    paths.append(line)
                else:
                    protocols.add("local")
                    local = Path(line) if Path(line).is_absolute() else Path(text).parent / line
                    paths.append(str(local.absolute()))
        else:
            protocols.add("local")
            files, failed = expand_inputs([text])
            paths.extend(str(p.absolute()) for p in files)
            failures.extend(failed)
    if len(protocols) > 1:
        raise ValueError(
            f"the inputs mix file systems ({', '.join(sorted(protocols))}): give one per run "
            "(local paths, or URLs of one protocol)"
        )
    unique = list(dict.fromkeys(paths))
    protocol = next(iter(protocols), "local")
    return unique, (None if protocol == "local" else protocol), failures


def _expand_url(fs: Any, root: str) -> list[str]:
    if any(c in root for c in "*?["):
        matches = fs.glob(root)
    elif fs.isdir(root):
        matches = fs.find(root)
    elif fs.isfile(root):
        return [root]
    else:
        return []
    images = [m for m in matches if Path(m).suffix.lower() in IMAGE_SUFFIXES and fs.isfile(m)]
    return sorted(images, key=lambda m: natural_sort_key(Path(m)))


def _read_list(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _protocol(fs: Any) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol


def _is_model_object(model: ModelSource) -> bool:
    return model is not None and not isinstance(model, str | Path)


def _model_identity(source: ModelSource) -> tuple[str, str]:
    """(model name for the rows, sha256 that keys resuming): a file's name and hash; a model name (random
    weights) hashes its name; a model object hashes its pickled bytes (what the actors receive)."""
    source = bundled_model_source(source)
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_file():
            return path.name, file_sha256(path)
        return str(source), hashlib.sha256(str(source).encode()).hexdigest()
    from ray import cloudpickle  # the serialiser Ray ships the model to its actors with

    return type(source).__name__, hashlib.sha256(cloudpickle.dumps(source)).hexdigest()


def _paths_done(out_dir: Path, model_sha256: str) -> set[str]:
    """Paths that already have a row for this model in `out_dir`'s part files."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for part in sorted(out_dir.glob("part-*.parquet")):
        table = pq.read_table(part, columns=["path", "model_sha256"])
        for path, sha256 in zip(table["path"].to_pylist(), table["model_sha256"].to_pylist(), strict=True):
            if sha256 == model_sha256:
                done.add(path)
    for part in sorted(out_dir.glob("part-*.jsonl")):
        with open(part, encoding="utf-8") as stream:
            for line in stream:
                row = json.loads(line)
                if row["model_sha256"] == model_sha256:
                    done.add(row["path"])
    return done


def _connect(ray_module: Any, address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it (and so shuts it down afterwards)."""
    if ray_module.is_initialized():
        return False
    where = address or "a new local Ray instance"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", FutureWarning
            )  # Ray's notice about its future accelerator default
            ray_module.init(address=address, log_to_driver=False, include_dashboard=False)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... by cause
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayClusterError(f"cannot connect to the Ray cluster at {where}: {reason}") from None
    return True


def _check_reachable(address: str | None) -> None:
    """Fail at once for a "host:port" / "ray://host:port" address nothing listens on: Ray itself retries
    such an address for minutes before giving up."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(f"Ray address {address!r} is not 'auto', 'host:port' or 'ray://host:port'")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayClusterError(
            f"cannot connect to the Ray cluster at {address}: nothing answers at {host}:{port} ({exc})"
        ) from None


def _run(
    ray_module: Any,
    paths: list[str],
    protocol: str | None,
    source: ModelSource,
    predictor_options: dict,
    options: RayOptions,
    common: dict,
) -> Iterator[dict]:
    """The rows of every path in `paths`, as the actors finish them; then error rows for lost batches."""
    from ray.data import ActorPoolStrategy, DataContext

    filesystem = None
    read_paths = paths
    if protocol is not None:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        fs = fsspec.filesystem(protocol)
        filesystem = PyFileSystem(FSSpecHandler(fs))
        read_paths = [fs._strip_protocol(p) for p in paths]
    context = DataContext.get_current()
    previous = context.max_errored_blocks, context.enable_progress_bars
    context.max_errored_blocks = -1  # a block lost twice becomes error rows below, not a failed job
    context.enable_progress_bars = False
    try:
        dataset = ray_module.data.read_binary_files(
            read_paths,
            include_paths=True,
            filesystem=filesystem,
            # Reading bytes needs little CPU; reserving none keeps every CPU for the actors.
            num_cpus=0,
            # Blocks of at most ~IMAGES_PER_BLOCK files: what a batch lost twice takes with it, at most.
            override_num_blocks=min(len(paths), max(4 * options.actors, -(-len(paths) // IMAGES_PER_BLOCK))),
        )
        with warnings.catch_warnings():
            # Ray 2.60 deprecates extra remote arguments, but names no replacement for the two retry limits.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            predicted = dataset.map_batches(
                _SegmentActor,
                fn_constructor_kwargs={
                    "source": source,
                    "predictor_options": predictor_options,
                    "threads": options.cpus_per_actor,
                    "protocol": protocol,
                    "common": common,
                },
                batch_size=predictor_options["batch_size"],
                batch_format="pyarrow",
                # One batch at a time per actor: a crash then takes no other batch down with it.
                compute=ActorPoolStrategy(size=options.actors, max_tasks_in_flight_per_actor=1),
                num_cpus=options.cpus_per_actor,
                # A crashed actor is restarted; its batch is tried once more, then its block counts as lost.
                max_restarts=-1,
                max_task_retries=1,
            )
        seen: set[str] = set()
        try:
            for batch in predicted.iter_batches(batch_format="pyarrow", batch_size=None):
                for row in batch.to_pylist():
                    seen.add(row["path"])
                    yield row
        except ray_module.exceptions.RayError as exc:  # e.g. no actor could load the model: not per image
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise RayClusterError(f"the Ray job failed after {len(seen)} images: {reason}") from exc
    finally:
        context.max_errored_blocks, context.enable_progress_bars = previous
    for path in paths:
        if path not in seen:
            yield _error_row(path, LOST_BATCH, **common)


class _SegmentActor:
    """One Ray actor: the model loaded once, then batches of `{path, bytes}` rows -> output rows."""

    def __init__(
        self, source: ModelSource, predictor_options: dict, threads: int, protocol: str | None, common: dict
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.predictor = Predictor(source, **predictor_options)
        self.protocol = protocol
        self.common = common

    def __call__(self, batch: Any) -> Any:
        import fsspec
        import pyarrow as pa

        fs = fsspec.filesystem(self.protocol) if self.protocol is not None else None
        rows: list[dict] = []
        loaded = []
        for path, data in zip(batch["path"].to_pylist(), batch["bytes"].to_pylist(), strict=True):
            name = fs.unstrip_protocol(path) if fs is not None else path
            try:
                loaded.append((name, data, load_image_bytes(data, name)))
            except PER_IMAGE_ERRORS as exc:
                rows.append(_error_row(name, _reason(exc), **self.common))
        outcomes = self._predict([image for _, _, image in loaded])
        for (name, data, _), outcome in zip(loaded, outcomes, strict=True):
            if isinstance(outcome, str):
                rows.append(_error_row(name, outcome, **self.common))
            else:
                rows.append(_result_row(name, data, outcome, **self.common))
        return pa.Table.from_pylist(rows, schema=_schema())

    def _predict(self, images: list) -> list:
        """Instances per image, or the error text; a failing batch is retried image by image, as
        `instaseg predict` does, so that one bad image fails alone."""
        if not images:
            return []
        try:
            return self.predictor.predict_tensors([to_tensor(image) for image in images])
        except PER_IMAGE_ERRORS as exc:
            if len(images) == 1:
                return [_reason(exc)]
        outcomes = []
        for image in images:
            try:
                outcomes.append(self.predictor.predict_tensors([to_tensor(image)])[0])
            except PER_IMAGE_ERRORS as exc:
                outcomes.append(_reason(exc))
        return outcomes


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("input_sha256", pa.string()),
            ("model", pa.string()),
            ("model_sha256", pa.string()),
            ("category_ids", pa.list_(pa.int64())),
            ("scores", pa.list_(pa.float64())),
            ("bboxes", pa.list_(pa.list_(pa.float64()))),
            ("masks", pa.list_(pa.string())),
            ("error", pa.string()),
        ]
    )


def _result_row(path: str, data: bytes, instances: Any, model: str, model_sha256: str) -> dict:
    height, width = instances.image_size
    results = instances.to_coco_results(0)
    return {
        "path": path,
        "height": int(height),
        "width": int(width),
        "input_sha256": hashlib.sha256(data).hexdigest(),
        "model": model,
        "model_sha256": model_sha256,
        "category_ids": [r["category_id"] for r in results],
        "scores": [r["score"] for r in results],
        "bboxes": [r["bbox"] for r in results],
        "masks": [r["segmentation"]["counts"] for r in results],
        "error": None,
    }


def _error_row(path: str, reason: str, model: str, model_sha256: str) -> dict:
    empty: dict = {"category_ids": [], "scores": [], "bboxes": [], "masks": []}
    return {
        "path": path,
        "height": None,
        "width": None,
        "input_sha256": None,
        "model": model,
        "model_sha256": model_sha256,
        **empty,
        "error": reason,
    }


class _PartWriter:
    """Rows -> part files of `ROWS_PER_PART` rows, each written atomically (a crash loses the open part
    only, and a rerun redoes just those images)."""

    def __init__(self, out_dir: Path, output_format: str) -> None:
        self.out_dir = out_dir
        self.output_format = output_format
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.rows: list[dict] = []
        self.parts = 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROWS_PER_PART:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        name = self.out_dir / f"part-{self.run}-{self.parts:05d}.{self.output_format}"
        if self.output_format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(self.rows, schema=_schema()), buffer)
            payload = buffer.getvalue()
        else:
            payload = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in self.rows).encode()
        with atomic_write(name, "wb") as stream:
            stream.write(payload)
        self.parts += 1
        self.rows = []

    def close(self) -> None:
        self.flush()


def read_rows(out_dir: str | Path) -> list[dict]:
    """Every row of the part files in `out_dir` (Parquet and JSONL), for checks and small outputs."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for part in sorted(Path(out_dir).glob("part-*")):
        if part.suffix == ".parquet":
            rows.extend(pq.read_table(part).to_pylist())
        elif part.suffix == ".jsonl":
            rows.extend(_json_lines(part))
    return rows


def _json_lines(path: Path) -> Iterable[dict]:
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            yield json.loads(line)
