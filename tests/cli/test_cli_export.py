"""`instaseg export` as a new user tries it: without --model it exports the bundled nuclei model."""

from __future__ import annotations

from pathlib import Path

import pytest

from instaseg.cli.main import main
from instaseg.io.files import file_sha256
from instaseg.models.default_model import default_model_path

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_export_without_model_writes_the_bundled_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from instaseg.models.onnx_metadata import read_metadata

    out = tmp_path / "model.onnx"
    assert main(["export", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    metadata = read_metadata(out)
    assert metadata.source == str(default_model_path())
    assert metadata.source_sha256 == file_sha256(default_model_path())
    assert metadata.categories == [{"id": 1, "name": "nucleus"}]
    assert metadata.operating_point["score_threshold"] == pytest.approx(0.7)


def test_model_is_optional_and_means_the_bundled_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI leaves --model None for the library, which takes the bundled model (fast: no export runs)."""
    from instaseg.export import onnx_export

    asked: list[object] = []

    def fake_export(source: object, path: Path, **options: object) -> object:
        asked.append(source)
        raise ValueError("stop here")

    monkeypatch.setattr(onnx_export, "export_model", fake_export)
    assert main(["export", "--out", str(tmp_path / "m.onnx")]) == 2
    assert asked == [None]


def test_a_float16_model_file_is_half_the_size_and_detects_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import torch

    from instaseg.io.images import load_image
    from instaseg.models import load_model
    from instaseg.models.default_model import bundled_model_source, held_out_samples_path
    from instaseg.models.model_file import ModelFile

    out = tmp_path / "condinst.fp16.pt"
    assert (
        main(["export", "--model", "nuclei_condinst", "--format", "model-file-fp16", "--out", str(out)]) == 0
    )
    assert f"wrote {out}" in capsys.readouterr().out
    bundled = Path(bundled_model_source("nuclei_condinst"))
    original, half = ModelFile.read(bundled), ModelFile.read(out)
    assert (half.family, half.config, half.categories) == (
        original.family,
        original.config,
        original.categories,
    )
    assert half.operating_point == original.operating_point and half.provenance["weights"] == "float16"
    floats = [name for name, tensor in original.state_dict.items() if tensor.dtype == torch.float32]
    assert floats and all(half.state_dict[name].dtype == torch.float16 for name in floats)
    assert out.stat().st_size < 0.55 * bundled.stat().st_size
    image_path = sorted(held_out_samples_path().glob("*/images/*.png"))[0]
    image = torch.from_numpy(load_image(image_path)).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        expected = load_model(bundled).detect([image])[0]
        got = load_model(out).detect([image])[0]
    assert len(expected) > 0 and abs(len(got) - len(expected)) <= max(1, len(expected) // 50)
    scores = sorted(expected.scores.tolist(), reverse=True)[:20]
    assert sorted(got.scores.tolist(), reverse=True)[:20] == pytest.approx(scores, abs=0.01)


def test_int8_is_refused_for_a_model_file(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    args = ["export", "--model", "nuclei_condinst", "--format", "model-file-fp16", "--int8", "dynamic"]
    assert main([*args, "--out", str(out)]) == 2
    assert not out.exists()
