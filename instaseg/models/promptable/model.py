"""`PromptableSam`: SAM's prompt encoder and two-way-transformer mask decoder on EfficientNet-Lite0 FPN
features, trained by instaseg on its own data (no official SAM weights needed).

It is a `instaseg.models.sam.Sam` (same `PromptEncoder`, `MaskDecoder`, `decode`; clicks and boxes are
also drawn as maps into the dense prompt embedding, `prompt_maps.PromptMapEncoder`, which made it learn), so
`instaseg.models.sam.predictor.SamPredictor` runs it unchanged: `set_image` resizes the long side to
`config.image_size` (256) instead of 1024, `preprocess` normalises with the detector's statistics and pads to
that square, and the encoder returns a `(B, 256, S/8, S/8)` embedding (FPN P3 at stride 8 through a neck);
the low-res masks are `(B, C, S/2, S/2)` over the padded S frame (stride 2).

In train mode `forward(images, targets)` simulates prompts from the targets' masks
(`prompt_simulation`) and returns the losses `LOSS_KEYS`; the training engine calls it like any family.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from instaseg.models.backbone import BackboneWithFPN
from instaseg.models.efficientnet_lite import EfficientNetLite
from instaseg.models.fpn import FeaturePyramidNetwork
from instaseg.models.mask_head import project_masks_on_boxes
from instaseg.models.norm import norm_layer
from instaseg.models.promptable.click_box import ClickBoxHead
from instaseg.models.promptable.config import PromptableConfig
from instaseg.models.promptable.prompt_maps import PromptMapEncoder
from instaseg.models.promptable.prompt_simulation import error_region_click, jittered_boxes, random_points
from instaseg.models.promptable.refiner import DetailFeatures, RoIMaskRefiner
from instaseg.models.sam import Sam
from instaseg.models.sam.common import LayerNorm2d, stability_score
from instaseg.models.sam.prompt_encoder import EMBED_DIM, PromptEncoder
from instaseg.models.sam.transforms import (
    postprocess_masks,
    resized_shape,
    scale_boxes,
    scale_coords,
    unscale_coords,
)
from instaseg.ops import paste_masks_in_image
from instaseg.structures.boxes import box_area, clip_boxes, mask_boxes, paired_giou, paired_iou
from instaseg.structures.instances import Instances

LOSS_KEYS = ("loss_mask_focal", "loss_mask_dice", "loss_iou")
# What `trained_stage: click_box` returns instead.
CLICK_BOX_LOSS_KEYS = ("loss_box_l1", "loss_box_giou")
ARCH = "lite0_fpn"
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
# Index of the single-mask output among the decoder's four (1..3 are the multimask outputs).
SINGLE_OUTPUT = slice(0, 1)
MULTI_OUTPUTS = slice(1, 4)
# A box derived from clicks reaches this many pixels beyond every positive click.
CLICK_MARGIN = 2.0
# Refined probabilities are clamped to [eps, 1 - eps] before their logits: outside its box a mask is -13.8.
REFINED_PROBABILITY_EPS = 1e-6


def loss_keys(config: PromptableConfig) -> tuple[str, ...]:
    """The losses training returns, in logging order: `CLICK_BOX_LOSS_KEYS` for `trained_stage: click_box`,
    else `LOSS_KEYS`."""
    return CLICK_BOX_LOSS_KEYS if config.trained_stage == "click_box" else LOSS_KEYS


class LiteFPNEncoder(nn.Module):
    """Normalised, padded `(B, 3, S, S)` -> `(B, 256, S/8, S/8)`: EfficientNet-Lite0, FPN down to P3 (the
    bundled detector's `backbone.*` layout, so its weights load as they are), then SAM's neck (1x1 conv,
    LayerNorm, 3x3 conv, LayerNorm). A frozen encoder (`trainable_layers` 0) runs without gradients."""

    def __init__(self, config: PromptableConfig) -> None:
        super().__init__()
        body = EfficientNetLite(norm_layer("frozen_bn", config.frozen_bn_eps))
        fpn = FeaturePyramidNetwork(body.out_channels, config.encoder_channels)
        self.backbone = BackboneWithFPN(body, fpn, config.encoder_trainable_layers)
        self.frozen = config.encoder_trainable_layers == 0
        if self.frozen:
            self.backbone.requires_grad_(False)
        self.neck = nn.Sequential(
            nn.Conv2d(config.encoder_channels, EMBED_DIM, kernel_size=1, bias=False),
            LayerNorm2d(EMBED_DIM),
            nn.Conv2d(EMBED_DIM, EMBED_DIM, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(EMBED_DIM),
        )

    def train(self, mode: bool = True) -> LiteFPNEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, images: Tensor) -> Tensor:
        """P3 `(B, C, S/8, S/8)`: the FPN's top-down path stops there (P2 is never computed)."""
        c2_to_c5 = self.backbone.body(images)
        fpn = self.backbone.fpn
        inner = fpn.inner_blocks[-1](c2_to_c5[-1])
        for index in range(len(c2_to_c5) - 2, 0, -1):
            lateral = fpn.inner_blocks[index](c2_to_c5[index])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
        return fpn.layer_blocks[1](inner)

    def forward(self, images: Tensor) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self.features(images)
        return self.neck(features)


class PromptableSam(Sam):
    """SAM's prompt side on `LiteFPNEncoder`; see the module docstring. `categories` (the one trained
    category) and `operating_point` are set by the loader, as for every family."""

    def __init__(self, config: PromptableConfig) -> None:
        super().__init__(LiteFPNEncoder(config), ARCH)
        self.config = config
        size = config.embedding_size
        self.prompt_encoder = PromptEncoder((size, size), (config.image_size, config.image_size))
        self.prompt_maps = PromptMapEncoder((size, size), (config.image_size, config.image_size))
        # Sam's buffers hold SAM's statistics; this encoder was trained with the detector's (0..255 scale).
        mean = torch.tensor(config.image_mean).view(-1, 1, 1) * 255
        std = torch.tensor(config.image_std).view(-1, 1, 1) * 255
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.refiner = RoIMaskRefiner(config) if config.refine_masks else None
        self.click_box = ClickBoxHead(config.encoder_channels) if config.click_box else None
        self._freeze_untrained_stage()
        self.categories: list[dict] | None = None
        self.operating_point: Any = None

    def _freeze_untrained_stage(self) -> None:
        """`trained_stage` decoder: the refiner and click-box head are frozen (the decoder's losses do not
        reach them); refiner: everything but the refiner's mask head and click maps is; click_box:
        everything but the click-box head."""
        stage = self.config.trained_stage
        if stage == "refiner":
            self.requires_grad_(False)
            for part in (self.refiner.mask_head, self.refiner.mask_predictor, self.refiner.click_maps):
                part.requires_grad_(True)
        elif stage == "click_box":
            self.requires_grad_(False)
            self.click_box.requires_grad_(True)
        else:
            for part in (self.refiner, self.click_box):
                if part is not None:
                    part.requires_grad_(False)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def preprocess(self, image: Tensor) -> Tensor:
        """Resized image `(B, 3, h, w)` in [0, 255], long side `image_size` -> normalised, zero-padded
        `(B, 3, image_size, image_size)`."""
        x = (image - self.pixel_mean) / self.pixel_std
        height, width = x.shape[-2:]
        return F.pad(x, (0, self.image_size - width, 0, self.image_size - height))

    def encode_prompts(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        mask_input: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """SAM's sparse tokens and dense embedding, plus the clicks and box drawn as maps
        (`PromptMapEncoder`) in the dense embedding: `(B, T, 256)`, `(B, 256, S/8, S/8)`."""
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        return sparse, dense + self.prompt_maps(points, boxes)

    def encode_detail(self, image: Tensor) -> DetailFeatures | None:
        """The refiner's FPN features of the `(3, H, W)` uint8 image (None without a refiner)."""
        if self.refiner is None:
            return None
        scaled = image.to(self.pixel_mean.device, torch.float32) / 255
        return self.refiner.features(self.image_encoder.backbone, scaled)

    def refine_masks(
        self,
        detail: DetailFeatures | None,
        logits: Tensor,
        iou: Tensor,
        boxes: Tensor | None,
        clicks: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor]:
        """`(B, C, H, W)` coarse logits in original pixels and their `(B, C)` predicted IoU -> the
        refiner's logits, each mask predicted inside the prompt's box `(B, 4)` or, without one, its coarse
        mask's enlarged box, with the prompt's clicks (`(B, N, 2)` x, y, `(B, N)` labels), all in original
        pixels, and scores = predicted IoU x the refined mask's stability score (which picked the best of
        a click's three answers more often than the IoU alone: docs/models.md). An empty coarse mask stays
        as it is. Refined logits are the pasted probabilities' logits."""
        if self.refiner is None or detail is None or logits.numel() == 0:
            return logits, iou
        outputs = logits.shape[1]
        coarse = logits.flatten(0, 1)
        if boxes is None:
            rois = self.refiner.mask_rois(coarse > 0)
        else:
            rois = boxes.to(coarse).repeat_interleave(outputs, dim=0)
        if clicks is not None:
            clicks = tuple(tensor.to(coarse.device).repeat_interleave(outputs, dim=0) for tensor in clicks)
        empty = box_area(rois) <= 0
        refined = torch.logit(self.refiner(detail, rois, clicks), eps=REFINED_PROBABILITY_EPS)
        refined = torch.where(empty[:, None, None], coarse, refined)
        stability = torch.nan_to_num(stability_score(refined), nan=0.0)
        scores = torch.where(empty, iou.flatten(), iou.flatten() * stability)
        return refined.view_as(logits), scores.view_as(iou)

    def click_boxes(self, detail: DetailFeatures | None, clicks: tuple[Tensor, Tensor]) -> Tensor | None:
        """Box prompts for B click prompts without a box (`(B, N, 2)` x, y original pixels, `(B, N)` labels):
        the click-box head's box of each prompt's first positive click, grown to hold every positive click
        (`CLICK_MARGIN` pixels beyond it), clipped to the image -> `(B, 4)` x1y1x2y2 original pixels. The
        decoder and the refiner then answer a box with clicks, which beat the coarse mask's box at every
        click count (docs/models.md). None without the head or when a prompt has no positive click."""
        coords, labels = clicks
        positive = labels == 1
        if self.click_box is None or detail is None or not bool(positive.any(dim=1).all()):
            return None
        first = coords[torch.arange(len(coords)), positive.int().argmax(dim=1)]
        boxes = self.click_box(detail, first)
        far = torch.finfo(coords.dtype).max
        low = torch.where(positive[..., None], coords, far).amin(dim=1) - CLICK_MARGIN
        high = torch.where(positive[..., None], coords + 1, -far).amax(dim=1) + CLICK_MARGIN
        boxes = torch.cat([torch.minimum(boxes[:, :2], low), torch.maximum(boxes[:, 2:], high)], dim=1)
        return clip_boxes(boxes, detail.original_size)

    def summary(self) -> dict[str, Any]:
        """Architecture facts for listings."""
        return {"family": "promptable", "arch": ARCH, **self.config.to_dict()}

    def forward(self, images: list[Tensor], targets: list[Instances]) -> dict[str, Tensor]:
        """Training losses (`loss_keys(config)`) for images `(3, H, W)` in [0, 1] and their targets' masks;
        the prompts are drawn from torch's generator (the trainer seeds it per micro-batch)."""
        if not self.training:
            raise RuntimeError("PromptableSam.forward computes training losses; use SamPredictor to predict")
        rounds = [losses for image in self._rounds_per_image(images, targets) for losses, _ in image]
        totals = torch.stack(rounds).mean(dim=0) if rounds else None
        # Every parameter joins the graph (with zero gradient where a step used no box or no mask input),
        # so DistributedDataParallel finds no unused parameters on any rank.
        anchor = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        keys = loss_keys(self.config)
        return {key: anchor if totals is None else totals[i] + anchor for i, key in enumerate(keys)}

    @torch.no_grad()
    def prompt_ious(self, images: list[Tensor], targets: list[Instances]) -> Tensor:
        """Validation during training: the IoU of each prompted object after each round of the training
        simulation -> `(rounds, objects)` (round 0: the first point or box), on the low-res grid (decoder
        stage) or on the refiner's 28 x 28 grid over each box (refiner stage); for the click_box stage one
        round, the IoU of each click's predicted box with its object's box."""
        columns = [
            torch.stack([ious for _, ious in rounds])
            for rounds in self._rounds_per_image(images, targets)
            if rounds
        ]
        if not columns:
            rounds = 1 if self.config.trained_stage == "click_box" else 1 + self.config.corrective_clicks
            return torch.zeros(rounds, 0)
        return torch.cat(columns, dim=1)

    def _rounds_per_image(
        self, images: list[Tensor], targets: list[Instances]
    ) -> list[list[tuple[Tensor, Tensor]]]:
        """For each image, each round's `(losses, per-object IoU (K,))`: of the decoder, of the refiner with
        `trained_stage: refiner`, or the click-box head's one round."""
        if self.config.trained_stage == "click_box":
            return [
                self._simulate_click_boxes(image, target)
                for image, target in zip(images, targets, strict=True)
            ]
        if self.config.trained_stage == "refiner":
            return [
                self._simulate_refined(image, target) for image, target in zip(images, targets, strict=True)
            ]
        embeddings = self.image_encoder(torch.stack([self._prepare(image) for image in images]))
        return [
            self._simulate(embedding[None], self._truths(target, image.shape[-2:])[0])
            for embedding, image, target in zip(embeddings, images, targets, strict=True)
        ]

    def _prepare(self, image: Tensor) -> Tensor:
        """`(3, H, W)` in [0, 1] -> the normalised padded input `(3, S, S)` (long side resized to S)."""
        new_h, new_w = resized_shape(image.shape[-2], image.shape[-1], self.image_size)
        resized = F.interpolate(image[None] * 255, (new_h, new_w), mode="bilinear", antialias=True)
        return self.preprocess(resized)[0]

    def _truths(self, target: Instances, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """`_chosen_objects` on the low-res grid `(K, S/2, S/2)` bool (a low-res pixel belongs to an object
        when most of its 2x2 input pixels do) and in original pixels `(K, H, W)` bool, without the objects
        that vanish on the low-res grid. Only the chosen masks are resized: dense images have hundreds of
        objects, and resizing them all cost more than the decoder."""
        bitmaps = self._chosen_objects(target, size)
        if len(bitmaps) == 0:
            low_res = torch.zeros(0, self.image_size // 2, self.image_size // 2, dtype=torch.bool)
            return low_res.to(bitmaps.device), bitmaps
        new_h, new_w = resized_shape(size[0], size[1], self.image_size)
        masks = F.interpolate(bitmaps[None].float(), (new_h, new_w), mode="bilinear")[0]
        masks = F.pad(masks, (0, self.image_size - new_w, 0, self.image_size - new_h))
        truths = F.avg_pool2d(masks[None], 2)[0] > 0.5
        kept = truths.flatten(1).any(dim=1)
        return truths[kept], bitmaps[kept]

    def _chosen_objects(self, target: Instances, size: tuple[int, int]) -> Tensor:
        """Up to `prompts_per_image` random objects of `target` whose low-res area should reach
        `min_object_pixels` -> their `(K, H, W)` bool masks in original pixels."""
        new_h, new_w = resized_shape(size[0], size[1], self.image_size)
        low_res_area = target.masks.area().float() * (new_h * new_w) / (4 * size[0] * size[1])
        large = torch.nonzero(low_res_area >= self.config.min_object_pixels).squeeze(1)
        chosen = large[torch.randperm(len(large))[: self.config.prompts_per_image]]
        device = self.pixel_mean.device
        if len(chosen) == 0:
            return torch.zeros(0, *size, dtype=torch.bool, device=device)
        return target.masks[chosen].bitmaps().to(device)

    def _decode_all(
        self,
        embedding: Tensor,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        mask_input: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """All four outputs: low-res logits `(K, 4, S/2, S/2)` and predicted IoU `(K, 4)`."""
        sparse, dense = self.encode_prompts(points, boxes, mask_input)
        return self.mask_decoder.predict_all(embedding, self.prompt_encoder.dense_pe(), sparse, dense)

    def _simulate(self, embedding: Tensor, truth: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each prompting round's losses and per-object IoU for the `(K, S/2, S/2)` low-res masks `truth` of
        one image (none when K = 0)."""
        config = self.config
        if len(truth) == 0:
            return []
        scale = self.image_size / truth.shape[-1]  # low-res pixel -> input pixel
        use_box = bool(torch.rand(()) < config.box_prompt_probability)
        boxes = None
        if use_box:
            boxes = jittered_boxes(truth, config.box_noise, config.box_noise_max / scale) * scale
            coords = torch.zeros(len(truth), 0, 2, device=truth.device)
        else:
            coords = random_points(truth)[:, None] * scale
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=truth.device)
        points = (coords, labels) if coords.shape[1] else None
        logits, iou = self._decode_all(embedding, points, boxes, None)
        selected = SINGLE_OUTPUT if use_box else MULTI_OUTPUTS
        losses, ious, previous = mask_losses(logits[:, selected], iou[:, selected], truth, config)
        rounds = [(losses, ious)]
        for _ in range(config.corrective_clicks):
            click_xy, click_labels = corrective_clicks(previous[:, 0] > 0, truth)
            coords = torch.cat([coords, click_xy[:, None] * scale], dim=1)
            labels = torch.cat([labels, click_labels[:, None]], dim=1)
            logits, iou = self._decode_all(embedding, (coords, labels), boxes, previous)
            losses, ious, previous = mask_losses(
                logits[:, SINGLE_OUTPUT], iou[:, SINGLE_OUTPUT], truth, config
            )
            rounds.append((losses, ious))
        return rounds

    def _simulate_refined(self, image: Tensor, target: Instances) -> list[tuple[Tensor, Tensor]]:
        """The refiner's training rounds on one `(3, H, W)` image, as `SamPredictor` runs it: the frozen
        decoder answers a first point or jittered box and then each corrective click (with its previous
        low-res logits); the refiner re-predicts inside the box prompt or the enlarged box of the decoder's
        mask (its best multimask output for a single click), with the clicks; the next click goes to the
        centre of the largest error of the refined mask at full resolution. Each round's losses and IoU
        are on the refiner's 28 x 28 grid over its box (the ground truth projected there)."""
        config, refiner = self.config, self.refiner
        low_res, full = self._truths(target, image.shape[-2:])
        if len(full) == 0:
            return []
        height, width = image.shape[-2:]
        new_h, new_w = resized_shape(height, width, self.image_size)
        scale = self.image_size / low_res.shape[-1]  # low-res pixel -> input pixel
        detail = refiner.features(self.image_encoder.backbone, image)
        with torch.no_grad():
            embedding = self.image_encoder(self._prepare(image)[None])
        boxes = prompt_rois = None
        coords = torch.zeros(len(full), 0, 2, device=full.device)
        if bool(torch.rand(()) < config.box_prompt_probability):
            # Jittered about the full-resolution box, as a user draws it: a box taken from the low-res
            # truth is off by up to a low-res cell (5 px of a 696x520 image) before any jitter.
            max_noise = config.box_noise_max * width / new_w
            prompt_rois = jittered_boxes(full, config.box_noise, max_noise)
            boxes = scale_boxes(prompt_rois, (height, width), self.image_size)
        else:
            coords = random_points(low_res)[:, None] * scale
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=full.device)
        rows = torch.arange(len(full), device=full.device)
        previous, rounds = None, []
        for round_index in range(1 + config.corrective_clicks):
            with torch.no_grad():
                points = (coords, labels) if coords.shape[1] else None
                logits, iou = self._decode_all(embedding, points, boxes, previous)
                if boxes is None and round_index == 0:
                    best = iou[:, MULTI_OUTPUTS].argmax(dim=1) + MULTI_OUTPUTS.start
                else:
                    best = torch.zeros_like(rows)
                previous = logits[rows, best][:, None]
                coarse = postprocess_masks(previous, (new_h, new_w), (height, width), self.image_size)[:, 0]
                rois = refiner.mask_rois(coarse > 0) if prompt_rois is None else prompt_rois
                missed = box_area(rois) <= 0
                if missed.any():
                    rois = torch.where(missed[:, None], refiner.mask_rois(full), rois)
            clicks = None
            if coords.shape[1]:
                clicks = (unscale_coords(coords, (height, width), (new_h, new_w)), labels)
            box_logits = refiner.box_logits(detail, rois, clicks)
            truth = project_masks_on_boxes(full.float(), rois, rows, box_logits.shape[-1]) > 0.5
            losses, ious, _ = mask_losses(
                box_logits[:, None], box_logits.new_zeros(len(full), 1), truth, config
            )
            rounds.append((torch.cat([losses[:2], losses.new_zeros(1)]), ious))
            with torch.no_grad():
                probabilities = box_logits.detach().sigmoid()[:, None]
                refined = paste_masks_in_image(probabilities, rois, (height, width))[:, 0] > 0.5
                click_xy, click_labels = corrective_clicks(refined, full)
            click_xy = scale_coords(click_xy, (height, width), self.image_size)
            coords = torch.cat([coords, click_xy[:, None]], dim=1)
            labels = torch.cat([labels, click_labels[:, None]], dim=1)
        return rounds

    def _simulate_click_boxes(self, image: Tensor, target: Instances) -> list[tuple[Tensor, Tensor]]:
        """The click-box head's training round on one `(3, H, W)` image: each chosen object clicked at its
        centre (probability `centre_click_probability`, the evaluation's first click) or at a random pixel;
        losses (L1 of log distances, 1 - GIoU) and the IoU of each predicted box with the object's."""
        full = self._chosen_objects(target, image.shape[-2:])
        if len(full) == 0:
            return []
        clicks = random_points(full)
        centred = torch.rand(len(full), device=full.device) < self.config.centre_click_probability
        if centred.any():
            centre_clicks, _ = corrective_clicks(torch.zeros_like(full[centred]), full[centred])
            clicks[centred] = centre_clicks
        detail = self.refiner.features(self.image_encoder.backbone, image)
        truth = mask_boxes(full).to(clicks)
        l1, predicted = self.click_box.losses(detail, clicks, truth)
        giou = paired_giou(predicted, truth)
        losses = torch.stack([l1.mean(), (1 - giou).mean()])
        return [(losses, paired_iou(predicted.detach(), truth))]


def corrective_clicks(predictions: Tensor, truths: Tensor) -> tuple[Tensor, Tensor]:
    """`error_region_click` for each of `(K, H, W)` bool predictions -> `(K, 2)` float x, y and `(K,)` labels;
    a prediction that is already exact gets a positive click at its object's centre."""
    coords, labels = [], []
    for prediction, truth in zip(predictions.cpu().numpy(), truths.cpu().numpy(), strict=True):
        click = error_region_click(prediction, truth) or error_region_click(np.zeros_like(truth), truth)
        coords.append((click.x, click.y))
        labels.append(int(click.positive))
    device = predictions.device
    return torch.tensor(coords, dtype=torch.float32, device=device), torch.tensor(labels, device=device)


def mask_losses(
    logits: Tensor, predicted_iou: Tensor, truth: Tensor, config: PromptableConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Losses of one round: logits `(K, C, h, w)`, predicted_iou `(K, C)`, truth `(K, h, w)` bool.

    Each prompt's mask loss is that of its best output (SAM's rule for ambiguous prompts: only the closest of
    the C masks learns); the IoU head learns every output's actual IoU. Returns the `(3,)` weighted losses
    (focal, Dice, IoU), the best output's IoU `(K,)` and its logits `(K, 1, h, w)`, detached, for the next
    round.
    """
    logits = logits.float()
    target = truth[:, None].float().expand_as(logits)
    # Per-mask reductions (the min over outputs needs them), which condinst.losses' summed forms do not give.
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    probs = logits.sigmoid()
    p_t = probs * target + (1 - probs) * (1 - target)
    alpha_t = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    focal = (alpha_t * bce * (1 - p_t) ** FOCAL_GAMMA).mean(dim=(2, 3))
    dice = 1 - (2 * (probs * target).sum(dim=(2, 3)) + 1) / (
        probs.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1
    )
    combined = config.focal_weight * focal + config.dice_weight * dice
    best = combined.argmin(dim=1)
    rows = torch.arange(len(best), device=best.device)
    with torch.no_grad():
        binary = logits > 0
        intersection = (binary & truth[:, None]).sum(dim=(2, 3)).float()
        union = (binary | truth[:, None]).sum(dim=(2, 3)).float()
        actual_iou = intersection / union.clamp(min=1)
    iou_loss = F.mse_loss(predicted_iou.float(), actual_iou)
    losses = torch.stack(
        [
            config.focal_weight * focal[rows, best].mean(),
            config.dice_weight * dice[rows, best].mean(),
            config.iou_weight * iou_loss,
        ]
    )
    return losses, actual_iou[rows, best], logits[rows, best][:, None].detach()
