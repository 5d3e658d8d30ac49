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
