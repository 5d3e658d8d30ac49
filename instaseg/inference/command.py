"""`run_predict`: the library function behind `instaseg predict` (images or a video; options parsed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from instaseg.data.coco import read_coco
from instaseg.export.onnx_export import model_source_for_backend
from instaseg.inference.postprocess import PostprocessOptions
from instaseg.inference.predictor import DEFAULT_TILING, Predictor
from instaseg.inference.runner import OutputOptions, PredictionSummary, predict_files
from instaseg.inference.tiling import TilingOptions
from instaseg.inference.tracking import TrackerOptions
from instaseg.inference.tta import TTAOptions
from instaseg.inference.video import VideoSummary, predict_video
from instaseg.models.loading import load_model, load_promptable
from instaseg.models.sam.refined_model import SamRefinedModel


def run_predict(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    model: str | Path | None = None,
    *,
    device: str = "cpu",
    postprocess: PostprocessOptions | None = None,
    tiling: TilingOptions | None = DEFAULT_TILING,
    tta: TTAOptions | None = None,
    outputs: OutputOptions | None = None,
    coco_gt: str | Path | None = None,
    batch_size: int = 1,
    video: bool = False,
    tracker: TrackerOptions | None = None,
    progress: bool | None = None,
    backend: str | None = None,
    refine_with: str | Path | None = None,
    refine_mode: str = "replace",
) -> PredictionSummary | VideoSummary:
    """Load `model` (None: the bundled default model) into a `Predictor` and predict on `inputs` (images)
    or, with `video`, on the one video file or frame folder in `inputs`; see `predict_files` and
    `predict_video` for what is written.

    `coco_gt`: a COCO JSON whose image ids the results use (matched by file name), so that `instaseg eval`
    can compare them with that ground truth. `backend`: "torch", "onnx" (ONNX Runtime; a checkpoint is
    exported once to the cache) or None (onnx for an `.onnx` model, else torch). `refine_with`: a promptable
    model (`load_promptable`: a SAM / MobileSAM checkpoint, an export, `nuclei_promptable`) that redraws
    every detected mask from its box (`SamRefinedModel`, `refine_mode`
    "replace" or "fuse").
    """
    if video and len(inputs) != 1:
        raise ValueError(f"--video takes exactly one video file or frame folder, got {len(inputs)} inputs")
    source = model_source_for_backend(model, backend)
    if refine_with is not None:
        source = SamRefinedModel(load_model(source), load_promptable(refine_with), mode=refine_mode)
    predictor = Predictor(
        source,
        device=device,
        postprocess=postprocess,
        tiling=tiling,
        tta=tta,
        batch_size=batch_size,
    )
    outputs = outputs or OutputOptions()
    if video:
        return predict_video(
            inputs[0], out_dir, predictor, tracker, overlay=outputs.overlay, progress=progress
        )
    image_ids = None
    if coco_gt is not None:
        dataset = read_coco(coco_gt, check_images=False)
        image_ids = {}
        for image in dataset.images:
            image_ids[image.file_name] = image.id
            image_ids.setdefault(Path(image.file_name).name, image.id)
    return predict_files(inputs, out_dir, predictor, outputs, image_ids=image_ids, progress=progress)
