"""ONNX export: parity with PyTorch eager on real nuclei images, dynamic sizes, metadata, bad input."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from instaseg.cli.main import main
from instaseg.export import ExportError, OnnxModelError, export_onnx, read_metadata
from instaseg.export.onnx_export import model_source_for_backend, onnx_model_file, require_onnx
from instaseg.export.parity import compare_instances
from instaseg.models import MaskRCNN, build
from instaseg.models.loading import load_model
from instaseg.models.onnx_metadata import FORMAT_VERSION, ExportMetadata, write_metadata
from instaseg.models.onnx_runtime import OnnxMaskRCNN

onnx = pytest.importorskip("onnx")


def test_reference_is_stable(lite0_model: MaskRCNN, bright_images: list[torch.Tensor]) -> None:
    """The parity tests' premise: PyTorch itself gives the same detections for a 1e-6 change of the input."""
    generator = torch.Generator().manual_seed(0)
    noisy = [image + 1e-6 * torch.randn(image.shape, generator=generator) for image in bright_images]
    with torch.inference_mode():
        for reference, perturbed in zip(lite0_model(bright_images), lite0_model(noisy), strict=True):
            assert compare_instances(reference, perturbed).meets()


def test_onnx_matches_pytorch_on_real_images(
    lite0_onnx: Path, lite0_model: MaskRCNN, bright_images: list[torch.Tensor]
) -> None:
    with torch.inference_mode():
        expected = lite0_model(bright_images)
    actual = OnnxMaskRCNN(lite0_onnx)(bright_images)
    for reference, candidate in zip(expected, actual, strict=True):
        assert len(reference) == 50
        stats = compare_instances(reference, candidate)
        assert stats.meets(box_tolerance=1e-3, min_mask_iou=0.99), stats
        assert torch.allclose(candidate.scores, reference.scores, atol=1e-4)
        assert candidate.fields.keys() == reference.fields.keys() == {"mask_logits"}
        assert candidate.labels.dtype == torch.int64 and candidate.boxes.dtype == torch.float32


def test_one_file_takes_any_image_size(
    lite0_onnx: Path, lite0_model: MaskRCNN, bright_images: list[torch.Tensor]
) -> None:
    # crops of other aspect ratios, resized to sizes that are not multiples of 32; the last is a strip whose
    # resized height (16) is half its padded height (32)
    crops = [bright_images[0][:, :200, :], bright_images[1][:, :, :200], bright_images[2][:, :16, :256]]
    # one image per eager call: batching pads images of other sizes together, which moves their detections
    with torch.inference_mode():
        expected = [lite0_model([crop])[0] for crop in crops]
    actual = OnnxMaskRCNN(lite0_onnx)(crops)
    for crop, reference, candidate in zip(crops, expected, actual, strict=True):
        assert candidate.image_size == tuple(crop.shape[-2:])
        assert compare_instances(reference, candidate).meets(), compare_instances(reference, candidate)


def test_metadata_round_trip(
    lite0_onnx: Path, lite0_checkpoint: Path, lite0_model: MaskRCNN, lite0_categories: list[dict]
) -> None:
    metadata = read_metadata(lite0_onnx)
    assert metadata.format_version == FORMAT_VERSION
    assert metadata.categories == lite0_categories
    assert metadata.num_classes == 2
    assert (metadata.min_size, metadata.max_size) == (
        lite0_model.config.min_size,
        lite0_model.config.max_size,
    )
    assert metadata.image_mean == pytest.approx(lite0_model.config.image_mean)
    assert metadata.input_size is None and metadata.opset == 18 and metadata.bn_folded
    assert metadata.source == str(lite0_checkpoint) and len(metadata.source_sha256) == 64
    assert metadata.config["backbone"] == "efficientnet_lite0"
    assert ExportMetadata.from_props(metadata.to_props(), "again") == metadata
    model = load_model(lite0_onnx)
    assert isinstance(model, OnnxMaskRCNN) and model.categories == lite0_categories and model.num_classes == 2


def test_onnx_runtime_threads_follow_torch_unless_given(lite0_onnx: Path) -> None:
    def threads(model: OnnxMaskRCNN) -> int:
        return model.session.get_session_options().intra_op_num_threads

    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert threads(OnnxMaskRCNN(lite0_onnx)) == 1
        assert threads(OnnxMaskRCNN(lite0_onnx, threads=2)) == 2
    finally:
        torch.set_num_threads(saved)


def test_foreign_onnx_file_is_refused(tmp_path: Path) -> None:
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "foreign",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "foreign.onnx"
    model_proto = helper.make_model(
        graph, producer_name="othertool", ir_version=8, opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.save(model_proto, path)
    with pytest.raises(OnnxModelError, match=r"foreign.onnx: not an instaseg export \(made by 'othertool'\)"):
        OnnxMaskRCNN(path)
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(OnnxModelError, match="garbage.onnx"):
        load_model(tmp_path / "garbage.onnx")


def test_other_export_format_version_is_refused(lite0_onnx: Path, tmp_path: Path) -> None:
    model_proto = onnx.load(str(lite0_onnx))
    write_metadata(model_proto, replace(read_metadata(lite0_onnx), format_version=99, version="9.0.0"))
    path = tmp_path / "newer.onnx"
    onnx.save(model_proto, path)
    with pytest.raises(
        OnnxModelError, match=r"newer.onnx: instaseg export format 99 \(written by instaseg 9.0.0\)"
    ):
        OnnxMaskRCNN(path)


def test_opset_without_roi_align_mode_is_refused(lite0_model: MaskRCNN, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="RoiAlign .* needs opset >= 16"):
        export_onnx(lite0_model, tmp_path / "old.onnx", opset=15)
    assert not (tmp_path / "old.onnx").exists()
    args = ["export", "--model", "maskrcnn_efficientnet_lite0_fpn", "--out", str(tmp_path / "a.onnx")]
    assert main([*args, "--opset", "13"]) == 2


def test_poolers_that_infer_their_scales_are_refused(lite0_model: MaskRCNN, tmp_path: Path) -> None:
    model = copy.deepcopy(lite0_model)
    model.roi_heads.mask_roi_pool.scales = None
    with pytest.raises(ExportError, match=r"MultiScaleRoIAlign\(\.\.\., scales=\.\.\.\)"):
        export_onnx(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_export_of_checkpoint_not_matching_its_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = build("maskrcnn_efficientnet_lite0_fpn", num_classes=3)
    checkpoint = {"config": {**model.config.to_dict(), "num_classes": 5}, "model": model.state_dict()}
    path = tmp_path / "mismatch.pt"
    torch.save(checkpoint, path)
    assert main(["export", "--model", str(path), "--out", str(tmp_path / "m.onnx")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith("instaseg export: error: cannot export") and "do not match its config" in error
    assert "size mismatch for roi_heads.box_predictor.cls_score.weight" in error
    assert not (tmp_path / "m.onnx").exists()


def test_missing_onnx_packages_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real_import = importlib.import_module

    def fake_import(name: str, *args: object) -> object:
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(ExportError, match=r"pip install 'instaseg\[onnx\]'"):
        require_onnx()


def test_checkpoints_are_exported_once_for_the_onnx_backend(
    lite0_onnx: Path, lite0_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import instaseg.export.onnx_export as onnx_export

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def fake_export(source: Path, path: Path, **options: object) -> None:
        calls.append(source)
        Path(path).write_bytes(lite0_onnx.read_bytes())

    monkeypatch.setattr(onnx_export, "export_model", fake_export)
    first = model_source_for_backend(lite0_checkpoint, "onnx")
    assert model_source_for_backend(lite0_checkpoint, "onnx") == first == onnx_model_file(lite0_checkpoint)
    assert calls == [lite0_checkpoint] and first.parent == tmp_path / "instaseg" / "onnx"
    assert model_source_for_backend(lite0_onnx, None) == lite0_onnx
    assert model_source_for_backend(lite0_checkpoint, None) == lite0_checkpoint
    with pytest.raises(ValueError, match="runs on the onnx backend"):
        model_source_for_backend(lite0_onnx, "torch")
    with pytest.raises(ExportError, match="needs an .onnx file or a checkpoint"):
        model_source_for_backend("maskrcnn_efficientnet_lite0_fpn", "onnx")


def test_predict_cli_with_an_onnx_model(
    lite0_onnx: Path, lite0_categories: list[dict], dsb_root: Path, dsb_image_ids: list[str], tmp_path: Path
) -> None:
    image = dsb_root / dsb_image_ids[0] / "images" / f"{dsb_image_ids[0]}.png"
    for backend in ([], ["--backend", "onnx"]):
        out = tmp_path / f"out{len(backend)}"
        args = ["predict", str(image), "--model", str(lite0_onnx), "--out", str(out), "--no-progress"]
        assert main(args + backend) == 0
        results = json.loads((out / "results.json").read_text())
        assert results and {r["category_id"] for r in results} == {lite0_categories[0]["id"]}


def test_static_export_checks_the_image_size(lite0_model: MaskRCNN, tmp_path: Path) -> None:
    path = tmp_path / "static.onnx"
    export_onnx(lite0_model, path, dynamic=False, input_size=(160, 160))
    model = OnnxMaskRCNN(path)
    assert model.metadata.input_size == (160, 160)
    assert len(model([torch.rand(3, 64, 64)])[0].boxes) >= 0
    with pytest.raises(ValueError, match="exported for resized images of 160x160 only"):
        model([torch.rand(3, 64, 96)])


@pytest.mark.slow
def test_predict_cli_exports_a_checkpoint_for_the_onnx_backend(
    lite0_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dsb_root: Path,
    dsb_image_ids: list[str],
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = dsb_root / dsb_image_ids[0] / "images" / f"{dsb_image_ids[0]}.png"
    args = ["predict", str(image), "--model", str(lite0_checkpoint), "--backend", "onnx", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "cache" / "instaseg" / "onnx").glob("*.onnx"))) == 1


@pytest.mark.slow
def test_resnet50_export_matches_pytorch(bright_images: list[torch.Tensor], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build("maskrcnn_resnet50_fpn", min_size=320, max_size=512, box_score_thresh=0.0)
    path = tmp_path / "r50.onnx"
    export_onnx(model, path)
    with torch.inference_mode():
        expected = model(bright_images[:1])
    actual = OnnxMaskRCNN(path)(bright_images[:1])
    assert len(expected[0]) > 0
    stats = compare_instances(expected[0], actual[0])
    assert stats.reference_count == stats.candidate_count == stats.matched
    assert stats.max_box_error < 1e-3 and stats.label_mismatches == 0
    # random mask heads give logits ~0 (probability 0.5, the mask threshold): compare the logits, not bitmaps
    logits = actual[0].fields["mask_logits"], expected[0].fields["mask_logits"]
    torch.testing.assert_close(*logits, rtol=1e-3, atol=1e-4)


def test_serving_loads_registered_checkpoints_on_the_onnx_backend(
    lite0_onnx: Path,
    lite0_checkpoint: Path,
    bright_images: list[torch.Tensor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import instaseg.export.onnx_export as onnx_export
    from instaseg.serving.config import ServingConfig
    from instaseg.serving.registration import register_model
    from instaseg.serving.served import ImageJob, ServedModel

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # the registered copy has the same bytes, so this stands in for the (slow) export of that copy
    monkeypatch.setattr(
        onnx_export, "export_model", lambda source, path, **_: Path(path).write_bytes(lite0_onnx.read_bytes())
    )
    entry = register_model(tmp_path / "registry", "nuclei", lite0_checkpoint)
    served = ServedModel.load(entry, ServingConfig(registry=str(tmp_path / "registry"), backend="onnx"))
    try:
        assert isinstance(served._predictor.model, OnnxMaskRCNN)
        result = served.submit(ImageJob(bright_images[0])).result(timeout=60)
        assert len(result.value) > 0 and result.value.labels.tolist() == [7] * len(result.value)
    finally:
        served.close()
