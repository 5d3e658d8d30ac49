"""SAM's easy-to-get-wrong numerics, each checked alone (the fixture parity tests check them together)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from instaseg.models.sam import mobile_sam
from instaseg.models.sam.prompt_encoder import PromptEncoder
from instaseg.models.sam.sam import DECODE_CHUNK
from instaseg.models.sam.transforms import (
    postprocess_masks,
    resize_image,
    resized_shape,
    scale_boxes,
    scale_coords,
    unscale_coords,
)
from instaseg.models.sam.vit_encoder import relative_positions, window_partition, window_unpartition


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((520, 696), (765, 1024)),
        ((696, 520), (1024, 765)),
        ((512, 512), (1024, 1024)),
        ((100, 301), (340, 1024)),
    ],
)
def test_longest_side_resize_rounds_half_up(size: tuple[int, int], expected: tuple[int, int]) -> None:
    # 100 * 1024 / 301 = 340.2 -> 340; 520 * 1024 / 696 = 765.06 -> 765; a floor would give the same here,
    # so also check a case where the fraction is >= 0.5: 3 * 1024 / 5 = 614.4, 7 * 1024 / 9 = 796.44.
    assert resized_shape(*size) == expected
    assert resized_shape(9, 7) == (1024, int(7 * 1024 / 9 + 0.5))
    assert resized_shape(2, 3) == (683, 1024)  # 682.67 rounds up, a floor gives 682


def test_resize_image_uses_the_rounded_shape() -> None:
    image = np.zeros((520, 696, 3), dtype=np.uint8)
    assert resize_image(image).shape == (765, 1024, 3)


def test_normalise_then_pad() -> None:
    model = mobile_sam()
    image = torch.full((1, 3, 765, 1024), 200.0)
    x = model.preprocess(image)
    assert x.shape == (1, 3, 1024, 1024)
    expected = (200.0 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(x[0, :, 0, 0], expected)
    assert torch.count_nonzero(x[:, :, 765:]) == 0  # the padding is 0 after normalising, not the mean colour


def test_points_are_shifted_to_pixel_centres_and_scaled_in_float64() -> None:
    encoder = PromptEncoder()
    coords = torch.tensor([[[10.0, 20.0]]])
    embedded = encoder.embed_points(coords, torch.tensor([[1]]), pad=False)
    expected = (
        encoder.pe_layer.encode(torch.tensor([[[10.5, 20.5]]]) / 1024) + encoder.point_embeddings[1].weight
    )
    torch.testing.assert_close(embedded, expected)
    scaled = scale_coords(torch.tensor([[348.0, 260.0]]), (520, 696))
    torch.testing.assert_close(scaled, torch.tensor([[348.0 * 1024 / 696, 260.0 * 765 / 520]]))


def test_unscaling_undoes_the_resize_of_points_and_boxes() -> None:
    original, resized = (520, 696), resized_shape(520, 696)
    points = torch.tensor([[[0.0, 0.0], [695.0, 519.0], [348.0, 260.0]]])
    boxes = torch.tensor([[10.0, 20.0, 300.0, 500.0]])
    torch.testing.assert_close(unscale_coords(scale_coords(points, original), original, resized), points)
    torch.testing.assert_close(unscale_coords(scale_boxes(boxes, original), original, resized), boxes)


def test_padding_point_only_without_a_box() -> None:
    encoder = PromptEncoder()
    torch.nn.init.normal_(encoder.not_a_point_embed.weight)
    points = (torch.tensor([[[10.0, 20.0]]]), torch.tensor([[1]]))
    sparse, dense = encoder(points, None, None)
    assert sparse.shape == (1, 2, 256)
    torch.testing.assert_close(sparse[0, 1], encoder.not_a_point_embed.weight[0])
    sparse, _ = encoder(points, torch.tensor([[0.0, 0.0, 50.0, 60.0]]), None)
    assert sparse.shape == (1, 3, 256)  # point + two box corners, no padding point
    assert dense.shape == (1, 256, 64, 64)


def test_relative_positions_are_interpolated_for_another_size() -> None:
    torch.manual_seed(0)
    table = torch.randn(27, 4)  # trained for a 14-window; a 32-grid needs 63 offsets
    result = relative_positions(32, 32, table)
    assert result.shape == (32, 32, 4)
    # Linear resize (align_corners=False) of each channel to 63 entries, then offset q - k + 31.
    positions = ((np.arange(63) + 0.5) * 27 / 63 - 0.5).clip(0, 26)
    resized = np.stack([np.interp(positions, np.arange(27), table[:, c].numpy()) for c in range(4)], axis=1)
    offsets = np.arange(32)[:, None] - np.arange(32)[None, :] + 31
    np.testing.assert_allclose(result.numpy(), resized[offsets], atol=1e-5)
    same = relative_positions(14, 14, table)  # no interpolation at the trained size
    torch.testing.assert_close(same[3, 5], table[3 - 5 + 13])


def test_window_partition_pads_with_zeros_and_round_trips() -> None:
    x = torch.randn(1, 64, 64, 3)
    windows, padded = window_partition(x, 14)
    assert padded == (70, 70) and windows.shape == (25, 14, 14, 3)
    assert torch.count_nonzero(windows[4, :, 8:]) == 0  # last column of windows: 64 - 56 = 8 real columns
    torch.testing.assert_close(window_unpartition(windows, 14, padded, (64, 64)), x)


def test_mask_postprocessing_takes_two_bilinear_steps() -> None:
    torch.manual_seed(0)
    low_res = torch.randn(2, 1, 256, 256) * 10
    two_steps = postprocess_masks(low_res, (765, 1024), (520, 696))
    assert two_steps.shape == (2, 1, 520, 696)
    # The official order, padding included: bit for bit the same as the version that skips the padding ...
    full = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)[..., :765, :1024]
    official = F.interpolate(full, (520, 696), mode="bilinear", align_corners=False)
    assert torch.equal(two_steps, official)
    portrait = postprocess_masks(low_res, (1024, 765), (696, 520))
    full = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)[..., :1024, :765]
    assert torch.equal(portrait, F.interpolate(full, (696, 520), mode="bilinear", align_corners=False))
    # ... and a single resize of the cropped low-res logits does not give it.
    direct = F.interpolate(low_res[..., :192, :], (520, 696), mode="bilinear", align_corners=False)
    assert (direct - two_steps).abs().max() > 1e-2


def test_prompts_decoded_in_groups_match_one_batch() -> None:
    """`Sam.decode` / `decode_where` decode `DECODE_CHUNK` prompts at a time; each prompt's result is what
    the decoder gives for the whole batch at once (per-prompt mask inputs included)."""
    torch.manual_seed(0)
    model = mobile_sam()
    count = 2 * DECODE_CHUNK + 1
    embedding = torch.randn(1, 256, 64, 64)
    points = (torch.rand(count, 2, 2) * 1024, torch.randint(0, 2, (count, 2)))
    mask_input = torch.randn(count, 1, 256, 256)
    with torch.no_grad():
        sparse, dense = model.encode_prompts(points, None, mask_input)
        whole_masks, whole_iou = model.mask_decoder(
            embedding, model.prompt_encoder.dense_pe(), sparse, dense, True
        )
        masks, iou = model.decode(embedding, points, mask_input=mask_input)
        every_iou, every, drawn = model.decode_where(
            embedding, points, mask_input=mask_input, draw=lambda iou: torch.ones(len(iou), dtype=torch.bool)
        )
        threshold = every_iou[:, 0].median()
        some_iou, some, some_drawn = model.decode_where(
            embedding, points, mask_input=mask_input, draw=lambda iou: iou[:, 0] > threshold
        )
    assert masks.shape == whole_masks.shape == (count, 3, 256, 256)
    torch.testing.assert_close(masks, whole_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, whole_iou, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(drawn[:, 1:], whole_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(every_iou[:, 1:], whole_iou, atol=1e-5, rtol=1e-5)
    assert torch.equal(every, torch.arange(count)) and torch.equal(some_iou, every_iou)
    # Only the prompts `draw` picks are upscaled, with the masks they get in the whole batch.
    picked = torch.nonzero(every_iou[:, 0] > threshold)[:, 0]
    assert 0 < len(picked) < count and torch.equal(some, picked)
    torch.testing.assert_close(some_drawn, drawn[picked], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "shared_image", [True, False], ids=["image shared by the prompts", "image per prompt"]
)
def test_decoder_trains_through_both_attention_paths(shared_image: bool) -> None:
    """The decoder's reordered attention (a batch-of-one image, or one image per prompt with a mask input)
    backpropagates: the promptable model trains it. Gradients match plain autograd through `forward`."""
    torch.manual_seed(0)
    decoder = mobile_sam().mask_decoder
    prompts = 3
    embedding = torch.randn(1, 256, 8, 8)
    pe = torch.randn(1, 256, 8, 8)
    sparse = torch.randn(prompts, 2, 256)
    dense = torch.randn(1 if shared_image else prompts, 256, 8, 8)
    attention = decoder.transformer.layers[0].cross_attn_image_to_token
    grads = []
    for reordered in (True, False):
        decoder.zero_grad()
        if not reordered:  # the plain attention, op for op as the official code
            attention.image_to_tokens = attention.forward
        masks, iou = decoder.predict_all(embedding, pe, sparse, dense)
        (masks.square().mean() + iou.sum()).backward()
        grads.append(attention.q_proj.weight.grad.clone())
        attention.__dict__.pop("image_to_tokens", None)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-3)
