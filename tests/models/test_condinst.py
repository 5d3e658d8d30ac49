"""The single-stage CondInst family: construction, model files, inputs, assignment, training on synthetic
data (several classes, objects below the stride-4 grid, 2,000 objects per image), and inference through
`Predictor` with TTA and tiling."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from instaseg.active.coreset import FeatureModel
from instaseg.inference.postprocess import PostprocessOptions
from instaseg.inference.predictor import Predictor
from instaseg.inference.tiling import TilingOptions
from instaseg.inference.tta import TTAOptions
from instaseg.models import ConfigError, ModelInputError, build, load_model
from instaseg.models.condinst import CondInst, CondInstConfig, build_condinst
from instaseg.models.condinst.assigner import assign, candidate_pairs, rank_in_groups
from instaseg.models.condinst.build import condinst_model_file, load_condinst_backbone_weights
from instaseg.models.condinst.config import HEAD_STRIDES
from instaseg.models.condinst.losses import mask_targets
from instaseg.models.mask_head import project_masks_on_boxes
from instaseg.models.protocol import DetectOptions
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks

SMALL = {"neck_channels": 32, "head_channels": 32, "pre_nms_top_k": 300, "detections_per_img": 100}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def confident_model(**settings: object) -> CondInst:
    """Random weights whose every point scores sigmoid(2) = 0.88: many detections, deterministic."""
    torch.manual_seed(0)
    model = build_condinst({**SMALL, "num_classes": 3, **settings})
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(2.0)
    return model


def disc_and_square(height: int = 96, width: int = 128) -> tuple[torch.Tensor, Instances]:
    """A dark image with a bright disc (class 1) and a bright square (class 2), with their masks."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    disc = (ys - 40) ** 2 + (xs - 36) ** 2 <= 20**2
    square = (ys >= 30) & (ys < 70) & (xs >= 80) & (xs < 116)
    image = torch.full((3, height, width), 0.1)
    image[0][disc] = 0.9
    image[2][square] = 0.8
    boxes = torch.tensor([[16.0, 20.0, 57.0, 61.0], [80.0, 30.0, 116.0, 70.0]])
    masks = Masks.from_bitmaps(torch.stack([disc, square]))
    return image, Instances((height, width), boxes, torch.tensor([1, 2]), masks=masks)


def many_squares(count: int, side: int, spacing: int, image_side: int) -> tuple[torch.Tensor, Instances]:
    """`count` bright squares of `side` pixels on a grid of `spacing` pixels (class 1)."""
    per_row = image_side // spacing
    image = torch.zeros(3, image_side, image_side)
    boxes, masks = [], torch.zeros(count, image_side, image_side, dtype=torch.bool)
    for index in range(count):
        y, x = (index // per_row) * spacing + 1, (index % per_row) * spacing + 1
        image[:, y : y + side, x : x + side] = 0.9
        masks[index, y : y + side, x : x + side] = True
        boxes.append([x, y, x + side, y + side])
    target = Instances(
        (image_side, image_side),
        torch.tensor(boxes, dtype=torch.float32),
        torch.ones(count, dtype=torch.int64),
        masks=Masks.from_bitmaps(masks),
    )
    return image, target


def test_named_config_is_condinst_with_169_parameter_dynamic_heads(tmp_path):
    model = load_model("condinst_efficientnet_lite0")
    assert isinstance(model, CondInst) and not model.training
    assert model.config.dynamic_params == 169 and model.head.kernels.out_channels == 169
    assert model.summary() == {
        "family": "condinst",
        "backbone": "efficientnet_lite0",
        "num_classes": 2,
        "max_size": 1024,
        "max_image_pixels": model.config.max_image_pixels,
    }
    condinst_model_file(model, {}).save(tmp_path / "model.pt")
    assert (tmp_path / "model.pt").stat().st_size < 15 * 1024 * 1024


def test_model_file_round_trip_gives_the_same_detections(tmp_path):
    model = confident_model()
    model.categories = [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}]
    condinst_model_file(model, {"iteration": 3}).save(tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert isinstance(loaded, CondInst) and loaded.categories == model.categories
    image = torch.rand(3, 70, 90)
    with torch.no_grad():
        (first,), (second,) = model.detect([image]), loaded.detect([image])
    assert len(first) == 100
    torch.testing.assert_close(first.boxes, second.boxes)
    torch.testing.assert_close(first.fields["mask_logits"], second.fields["mask_logits"])


def randomise_norm_statistics(model: torch.nn.Module) -> None:
    """Non-trivial batch-norm statistics and affine parameters (a fresh layer's fold is the identity)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.1)


def test_inference_folds_every_norm_and_keeps_the_outputs():
    model = confident_model().eval()
    randomise_norm_statistics(model)
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        folded, folded_masks = model.features(images)
        pyramid = model.neck(model.body(images))  # the model's own, unfolded networks
        reference, reference_masks = model.head(pyramid, HEAD_STRIDES), model.mask_branch(pyramid[0])
    network = model.folded_network()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    for name in ("cls_logits", "distances", "kernels"):
        torch.testing.assert_close(getattr(folded, name), getattr(reference, name), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(folded_masks, reference_masks, rtol=1e-4, atol=1e-4)
    # A changed weight (an optimiser step, load_state_dict) rebuilds the folded copy.
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(-3.0)
    assert model.folded_network() is not network


def test_image_features_pool_each_image_without_its_padding():
    model = confident_model().eval()
    assert isinstance(model, FeatureModel)  # core-set and hybrid ranking can use this family
    small = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(2))
    large = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        alone = model.image_features([small])
        batched = model.image_features([small, large])
    assert batched.shape == (2, 32)  # the neck's channels (SMALL)
    # Padded to the large image's size, the small image's cells change only near its border (convolutions
    # see the padding there): its vector stays far closer to its own unpadded one than to the other image's.
    padding_change = torch.linalg.vector_norm(batched[0] - alone[0])
    assert padding_change < 0.25 * torch.linalg.vector_norm(batched[0] - batched[1])


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="unknown key 'neck_width'"):
        CondInstConfig.from_dict({"neck_width": 3})
    with pytest.raises(ConfigError, match="nms_thresh: 1.5 must be within"):
        CondInstConfig(nms_thresh=1.5)
    with pytest.raises(ConfigError, match="num_classes: 1 must be at least 2"):
        CondInstConfig(num_classes=1)
    assert CondInstConfig.from_dict(CondInstConfig(mask_size=14).to_dict()) == CondInstConfig(mask_size=14)


@pytest.mark.parametrize(
    "bad",
    [
        torch.rand(64, 64, 3),
        torch.rand(3, 0, 10),
        torch.full((3, 8, 8), float("nan")),
        torch.zeros(3, 8, 8, dtype=torch.int32),
        np.zeros((8, 8, 3)),
    ],
    ids=["channels-last", "empty", "nan", "int32", "numpy"],
)
def test_bad_images_raise_the_same_errors_as_mask_rcnn(bad):
    mask_rcnn = build("maskrcnn_resnet18_fpn", min_size=64, max_size=64)
    condinst = build_condinst(SMALL)
    with pytest.raises(ModelInputError) as expected:
        mask_rcnn.detect([bad])
    with pytest.raises(ModelInputError) as got:
        condinst.detect([bad])
    assert str(got.value) == str(expected.value)


def test_image_without_objects_gives_empty_instances():
    model = build_condinst(SMALL)  # untrained: every score is ~0.01, below the 0.05 threshold
    (instances,) = model.detect([torch.rand(3, 50, 70)])
    assert len(instances) == 0 and instances.image_size == (50, 70)
    assert instances.boxes.shape == (0, 4) and instances.fields["mask_logits"].shape == (0, 28, 28)
    assert instances.masks.bitmaps().shape == (0, 50, 70)


def test_detect_options_change_thresholds_per_call_only():
    model = confident_model()
    image = torch.rand(3, 64, 64)
    with torch.no_grad():
        (strict,) = model.detect([image], DetectOptions(score_threshold=0.95))
        (few,) = model.detect([image], DetectOptions(max_detections=7))
        (default,) = model.detect([image])
    assert len(strict) == 0 and len(few) == 7 and len(default) == 100
    assert bool((default.scores[:-1] >= default.scores[1:]).all())
    assert set(default.labels.tolist()) <= {1, 2}


def test_candidates_reach_objects_smaller_than_the_stride_4_grid():
    # a 1.5-pixel object between cell centres: no centre inside its box, but its nearest points are candidates
    gt = torch.tensor([[5.0, 5.0, 6.5, 6.5]])
    gt_index, point_index = candidate_pairs(gt, [(8, 8), (4, 4), (2, 2)], HEAD_STRIDES, radius=1.0)
    assert gt_index.tolist() == [0] * len(point_index)
    level0 = point_index[point_index < 64]
    assert sorted(level0.tolist()) == [0, 1, 8, 9]  # cells centred at (2, 2), (6, 2), (2, 6), (6, 6)


def test_rank_in_groups_and_assignment_resolve_conflicts():
    groups = torch.tensor([1, 0, 1, 0, 1])
    values = torch.tensor([0.5, 0.2, 0.1, 0.9, 0.3])
    assert rank_in_groups(groups, values, 2).tolist() == [2, 0, 0, 1, 1]
    points = torch.tensor([[2.0, 2.0], [6.0, 2.0]])
    strides = torch.tensor([4.0, 4.0])
    predicted = torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 0.0, 8.0, 4.0]])
    gt = torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 0.0, 8.0, 4.0]])
    result = assign(
        points,
        strides,
        [(1, 2)],
        (4,),
        predicted,
        torch.zeros(2, 1),
        gt,
        torch.tensor([1, 1]),
        1.0,
        3.0,
        13,
        3.0,
    )
    assert result.gt_index.tolist() == [0, 1]
    torch.testing.assert_close(result.ious, torch.ones(2), atol=1e-5, rtol=0)


def test_chunked_mask_targets():
    masks = torch.zeros(3, 16, 16, dtype=torch.uint8)
    masks[1, 4:8, 4:8] = 1
    boxes = torch.tensor([[4.0, 4.0, 8.0, 8.0]] * 5)
    matched = torch.tensor([1, 0, 1, 2, 1])
    targets = mask_targets(masks, boxes, matched, size=4, chunk=2)
    # the same as Mask R-CNN's projection of all masks at once (its pixel convention: the RoIAlign of
    # aligned=False, which `paste_masks_in_image` inverts)
    torch.testing.assert_close(targets, project_masks_on_boxes(masks, boxes, matched, 4))
    assert targets[[0, 2, 4]].min() > 0.2 and targets[[1, 3]].max() == 0


def test_training_losses_are_finite_with_gradients_and_negative_images():
    model = build_condinst({**SMALL, "num_classes": 3}).train()
    image, target = disc_and_square()
    empty = Instances(
        (64, 80),
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.int64),
        masks=Masks.from_bitmaps(torch.zeros(0, 64, 80, dtype=torch.bool)),
    )
    losses = model([image, torch.rand(3, 64, 80)], [target, empty])
    assert set(losses) == {"loss_cls", "loss_box", "loss_mask_dice", "loss_mask_bce"}
    assert all(bool(torch.isfinite(value)) and value > 0 for value in losses.values())
    sum(losses.values()).backward()
    assert model.head.kernels.weight.grad.abs().sum() > 0
    assert model.body._conv_stem.weight.grad is None  # frozen stages
    (only_empty,) = [model([torch.rand(3, 64, 80)], [empty])]
    assert float(only_empty["loss_box"]) == 0 and float(only_empty["loss_mask_dice"]) == 0
    with pytest.raises(ModelInputError, match="training mode needs targets"):
        model([image])


@pytest.mark.slow
def test_2000_objects_and_sub_stride_objects_train_and_predict_within_memory():
    torch.manual_seed(0)
    model = build_condinst({**SMALL, "pre_nms_top_k": 2000, "detections_per_img": 500}).train()
    image, target = many_squares(2000, side=3, spacing=11, image_side=495)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    losses = model([image], [target])
    sum(losses.values()).backward()
    tiny_image, tiny_target = many_squares(40, side=2, spacing=9, image_side=64)
    tiny = model([tiny_image], [tiny_target])
    assert all(bool(torch.isfinite(value)) for value in [*losses.values(), *tiny.values()])
    model.eval()
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(2.0)
        (instances,) = model.detect([image])
    assert len(instances) == 500
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 3000, f"peak memory grew by {grown_mb:.0f} MB"


@pytest.mark.slow
def test_two_classes_are_learned_on_a_synthetic_image():
    torch.manual_seed(0)
    model = build_condinst({"num_classes": 3})
    # from ImageNet as in training: a random-init body's activations all but vanish through its frozen batch
    # norms, and the head's batch norms then differ between training and eval statistics
    load_condinst_backbone_weights(model, "imagenet")
    model.train()
    image, target = disc_and_square()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(100):
        loss = sum(model([image], [target]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        (instances,) = model.detect([image], DetectOptions(score_threshold=0.5))
    assert sorted(instances.labels.tolist()) == [1, 2]
    masks, wanted = instances.masks.bitmaps(), target.masks.bitmaps()
    for mask, label in zip(masks, instances.labels.tolist(), strict=True):
        truth = wanted[label - 1]
        assert float((mask & truth).sum() / (mask | truth).sum()) > 0.75


def test_predictor_tta_and_tiling_work_through_the_protocol():
    model = confident_model()
    image = (np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8)
    everything = PostprocessOptions(score_threshold=0.05)
    plain = Predictor(model, postprocess=everything).predict(image)
    assert len(plain) == 100 and plain.image_size == (80, 100)
    assert plain.labels.max() <= 2 and plain.masks.bitmaps().shape == (100, 80, 100)
    fused = Predictor(model, postprocess=everything, tta=TTAOptions(flip=True, scales=(1.0, 1.5))).predict(
        image
    )
    assert len(fused) > 0 and fused.image_size == (80, 100)
    tiles = TilingOptions(tile_size=64, overlap=16, min_image_side=90)
    tiled = Predictor(model, postprocess=everything, tiling=tiles).predict(image)
    assert len(tiled) > 0 and tiled.boxes[:, 2].max() <= 100 and tiled.boxes[:, 3].max() <= 80
