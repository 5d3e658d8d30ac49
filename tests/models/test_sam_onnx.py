"""ONNX export of SAM (instaseg/export/sam_onnx.py): both graphs on ONNX Runtime against eager PyTorch.

Exporting takes tens of seconds per graph (minutes on a busy machine), so these tests are slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from instaseg.cli.main import main
from instaseg.export.sam_onnx import (
    decoder_inputs,
    export_sam,
    export_sam_decoder,
    export_sam_encoder,
    run_onnx,
)
from instaseg.models.sam import ViTConfig, mobile_sam, sam_vit
from instaseg.models.sam.onnx_sam import OnnxSam
from instaseg.models.sam.predictor import SamPredictor

pytestmark = pytest.mark.slow
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    sam = mobile_sam()
    for parameter in sam.mask_decoder.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    torch.nn.init.normal_(sam.prompt_encoder.no_mask_embed.weight)
    return sam


@pytest.fixture(scope="module")
def decoder_path(model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_sam_decoder(model, tmp_path_factory.mktemp("onnx") / "decoder.onnx")


@pytest.mark.parametrize(
    ("prompts", "points", "with_boxes", "with_mask"),
    [(1, 1, False, False), (3, 2, True, False), (4, 0, True, False), (2, 1, False, True)],
    ids=["one-point", "points+boxes", "boxes", "mask-input"],
)
def test_decoder_graph_matches_eager(
    model, decoder_path: Path, prompts, points, with_boxes, with_mask
) -> None:
    generator = torch.Generator().manual_seed(prompts * 10 + points)
    embedding = torch.randn(1, 256, 64, 64, generator=generator)
    coords = torch.rand(prompts, points, 2, generator=generator) * 1000 if points else None
    labels = torch.randint(0, 2, (prompts, points), generator=generator) if points else None
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0]]).repeat(prompts, 1) if with_boxes else None
    masks = torch.randn(prompts, 1, 256, 256, generator=generator) if with_mask else None
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(None if coords is None else (coords, labels), boxes, masks)
        expected_masks, expected_iou = model.mask_decoder.predict_all(
            embedding, model.prompt_encoder.dense_pe(), sparse, dense
        )
    graph_coords, graph_labels = decoder_inputs(coords, labels, boxes, prompts)
    low_res, iou = run_onnx(
        decoder_path,
        {
            "image_embeddings": embedding.numpy(),
            "point_coords": graph_coords.numpy(),
            "point_labels": graph_labels.numpy(),
            "mask_input": (masks if with_mask else torch.zeros(prompts, 1, 256, 256)).numpy(),
            "has_mask_input": np.full(prompts, 1.0 if with_mask else 0.0, dtype=np.float32),
        },
    )
    assert low_res.shape == (prompts, 4, 256, 256)
    np.testing.assert_allclose(iou, expected_iou.numpy(), atol=1e-4)
    np.testing.assert_allclose(low_res, expected_masks.numpy(), atol=1e-3)


def test_encoder_graph_matches_eager(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sam = sam_vit(ViTConfig(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,)))
    for parameter in sam.image_encoder.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    path = export_sam_encoder(sam, tmp_path / "encoder.onnx")
    image = sam.preprocess(torch.rand(1, 3, 700, 1024) * 255)
    with torch.no_grad():
        expected = sam.image_encoder(image)
    (embedding,) = run_onnx(path, {"image": image.numpy()})
    assert embedding.shape == (1, 256, 64, 64)
    np.testing.assert_allclose(embedding, expected.numpy(), atol=1e-3)


def test_export_command_writes_both_graphs_of_a_sam_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    sam = sam_vit(ViTConfig(embed_dim=32, depth=1, num_heads=2, global_attn_indexes=()))
    checkpoint = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), checkpoint)  # the official key layout
    assert main(["export", "--model", str(checkpoint), "--out", str(tmp_path / "sam.onnx")]) == 0
    assert "sam.encoder.onnx" in capsys.readouterr().out
    image = sam.preprocess(torch.rand(1, 3, 512, 1024) * 255)
    with torch.no_grad():
        expected = sam.image_encoder(image)
    (embedding,) = run_onnx(tmp_path / "sam.encoder.onnx", {"image": image.numpy()})
    np.testing.assert_allclose(embedding, expected.numpy(), atol=1e-3)
    graph_coords, graph_labels = decoder_inputs(None, None, torch.tensor([[10.0, 20.0, 300.0, 400.0]]), 1)
    low_res, iou = run_onnx(
        tmp_path / "sam.decoder.onnx",
        {
            "image_embeddings": expected.numpy(),
            "point_coords": graph_coords.numpy(),
            "point_labels": graph_labels.numpy(),
            "mask_input": np.zeros((1, 1, 256, 256), dtype=np.float32),
            "has_mask_input": np.zeros(1, dtype=np.float32),
        },
    )
    assert low_res.shape == (1, 4, 256, 256) and iou.shape == (1, 4)
    args = ["export", "--model", str(checkpoint), "--out", str(tmp_path / "q.onnx"), "--int8", "dynamic"]
    assert main(args) == 2
    assert "float32 only" in capsys.readouterr().err


def test_predictor_on_onnx_runtime_answers_like_eager(tmp_path: Path) -> None:
    torch.manual_seed(1)
    sam = sam_vit(ViTConfig(embed_dim=32, depth=1, num_heads=2, global_attn_indexes=()))
    for parameter in sam.mask_decoder.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    written = export_sam(sam, tmp_path / "sam.onnx")
    onnx_model = OnnxSam(written.decoder, threads=2)
    assert onnx_model.arch == "vit_custom"
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    eager, graphs = SamPredictor(sam), SamPredictor(onnx_model)
    eager.set_image(image)
    graphs.set_image(image)
    torch.testing.assert_close(graphs.embedding, eager.embedding, atol=1e-3, rtol=0)
    prompts = [
        {"points": [[10, 20], [40, 30]], "labels": [1, 0]},  # one point set, three masks
        {"boxes": [[2, 3, 30, 20], [25, 10, 78, 40], [0, 0, 79, 47]], "multimask": False},
        {"points": [[12, 12]], "labels": [1], "boxes": [[2, 3, 30, 20], [25, 10, 78, 40]]},
    ]
    for prompt in prompts:
        expected, found = eager.predict(**prompt), graphs.predict(**prompt)
        torch.testing.assert_close(found.scores, expected.scores, atol=1e-3, rtol=0)
        torch.testing.assert_close(
            found.fields["low_res_logits"], expected.fields["low_res_logits"], atol=1e-2, rtol=0
        )
        agreement = (found.masks.bitmaps() == expected.masks.bitmaps()).float().mean()
        assert agreement > 0.999, (prompt, float(agreement))
    with pytest.raises(FileNotFoundError, match="missing"):
        OnnxSam(tmp_path / "other.onnx")
