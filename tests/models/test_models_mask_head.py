"""The mask predictor's 1x1-conv form used by exported graphs."""

import pytest
import torch

from instaseg.models.mask_head import MaskRCNNPredictor, SubpixelMaskPredictor


@pytest.mark.parametrize(("num_classes", "rois"), [(2, 7), (5, 3), (2, 0)])
def test_subpixel_predictor_computes_the_transposed_conv_predictor(num_classes: int, rois: int) -> None:
    torch.manual_seed(0)
    predictor = MaskRCNNPredictor(in_channels=16, dim_reduced=8, num_classes=num_classes).eval()
    with torch.no_grad():  # non-zero biases and logits weights of unit scale, so that every term shows
        for parameter in predictor.parameters():
            parameter.normal_()
    before = [parameter.clone() for parameter in predictor.parameters()]
    features = torch.randn(rois, 16, 14, 14)

    subpixel = SubpixelMaskPredictor.from_predictor(predictor).eval()

    with torch.no_grad():
        expected, actual = predictor(features), subpixel(features)
    assert actual.shape == (rois, num_classes, 28, 28)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, predictor.parameters(), strict=True))
