"""`PromptableConfig`: the settings of instaseg's own promptable model (a SAM-style prompt encoder and mask
decoder on a detector's EfficientNet-Lite0 FPN features), as a dataclass that round-trips to plain data."""

from __future__ import annotations

from dataclasses import dataclass

from instaseg.models.config import ConfigError, ModelSettings

ENCODERS = ("efficientnet_lite0_fpn",)
TRAINED_STAGES = ("decoder", "refiner", "click_box")
# The FPN level that becomes the image embedding: P3, stride 8 (a 256 input gives a 32x32 grid).
EMBEDDING_STRIDE = 8
# The bundled detector's pixel normalisation (TF's efficientnet-lite preprocessing), on a 0..1 scale.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass
class PromptableConfig(ModelSettings):
    """Settings of `instaseg.models.promptable.PromptableSam`.

    Geometry: an image's long side is resized to `image_size` and the rest zero-padded (as SAM does at 1024);
    the encoder's FPN level P3 (`encoder_channels` wide, stride 8) goes through a neck to the decoder's 256
    channels: `image_size` 256 gives a `(1, 256, 32, 32)` embedding and `(B, C, 128, 128)` low-res masks
    (512 would give SAM's 64x64 grid at 3.6x the training time per step, measured on this 2-core machine).
    `encoder_trainable_layers`: 0 freezes the whole encoder (its features are computed without gradients);
    k > 0 trains the FPN and the top k body stages. `num_classes` (training categories + 1) only says which
    categories the model file lists: the model is class-agnostic, every mask it returns has label 1.

    Training (prompts simulated from the ground truth, `prompt_simulation`): `prompts_per_image` objects per
    image, each first prompted by a box (probability `box_prompt_probability`, corners jittered by
    `box_noise` x the side, at most `box_noise_max` input pixels) or one positive point inside it, then
    `corrective_clicks` more rounds that add a click at the centre of the largest error region and feed the
    previous low-res logits as mask input. Losses: `focal_weight` x focal + `dice_weight` x Dice on the
    low-res masks (a single click takes the best of the three multimask outputs), `iou_weight` x MSE of the
    predicted IoU. Objects smaller than `min_object_pixels` low-res pixels are not prompted.

    Refinement (`refine_masks`, `refiner.RoIMaskRefiner`): every mask is predicted again inside its box (the
    prompt's box, or the coarse mask's box enlarged `refine_box_expansion` times) by a Mask R-CNN mask head
    (`mask_head_channels` wide) on the encoder's FPN run with the detector's resize (short side
    `refine_min_size`, long side at most `refine_max_size`). `trained_stage`: what training updates, the
    `decoder` (prompt side and neck; the refiner stays as loaded) or the `refiner` (its mask head and click
    maps, on the frozen decoder's masks; the same rounds, losses on its 28 x 28 grid, `loss_iou` 0).

    Click boxes (`click_box`, `click_box.ClickBoxHead`): a click prompt without a box gets one, regressed
    from its first positive click and grown to hold the others (`PromptableSam.click_boxes`); the decoder
    and the refiner answer it as a box with clicks. `trained_stage: click_box` trains only that head:
    `prompts_per_image` objects per image, each clicked at its centre (probability
    `centre_click_probability`, where the evaluation's first click goes) or at a random pixel of it; losses
    `loss_box_l1` (log distances) and `loss_box_giou` (1 - GIoU).
    """

    num_classes: int = 2
    encoder: str = "efficientnet_lite0_fpn"
    encoder_channels: int = 128
    encoder_trainable_layers: int = 0
    frozen_bn_eps: float = 1e-3
    image_size: int = 256
    image_mean: tuple[float, ...] = LITE_MEAN
    image_std: tuple[float, ...] = LITE_STD
    prompts_per_image: int = 8
    corrective_clicks: int = 2
    box_prompt_probability: float = 0.5
    box_noise: float = 0.1
    box_noise_max: float = 20.0
    min_object_pixels: int = 4
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    refine_masks: bool = False
    trained_stage: str = "decoder"
    refine_min_size: int = 576
    refine_max_size: int = 1000
    refine_box_expansion: float = 1.15
    mask_head_channels: int = 128
    click_box: bool = False
    centre_click_probability: float = 0.5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid field."""
        if self.encoder not in ENCODERS:
            raise ConfigError(f"encoder: {self.encoder!r} is not one of {', '.join(ENCODERS)}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes: {self.num_classes} must be at least 2 (background + one class)")
        if self.image_size < 64 or self.image_size % (4 * EMBEDDING_STRIDE):
            raise ConfigError(f"image_size: {self.image_size} must be >= 64 and a multiple of 32")
        if not 0 <= self.encoder_trainable_layers <= 5:
            raise ConfigError(f"encoder_trainable_layers: {self.encoder_trainable_layers} must be in 0..5")
        for name in (
            "encoder_channels",
            "prompts_per_image",
            "min_object_pixels",
            "refine_min_size",
            "refine_max_size",
            "mask_head_channels",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be a positive integer")
        if self.corrective_clicks < 0:
            raise ConfigError(f"corrective_clicks: {self.corrective_clicks} must be >= 0")
        if not 0.0 <= self.box_prompt_probability <= 1.0:
            raise ConfigError(f"box_prompt_probability: {self.box_prompt_probability} must be in [0, 1]")
        for name in (
            "box_noise",
            "box_noise_max",
            "focal_weight",
            "dice_weight",
            "iou_weight",
            "frozen_bn_eps",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: {getattr(self, name)} must be >= 0")
        if self.trained_stage not in TRAINED_STAGES:
            raise ConfigError(
                f"trained_stage: {self.trained_stage!r} is not one of {', '.join(TRAINED_STAGES)}"
            )
        if self.trained_stage == "refiner" and not self.refine_masks:
            raise ConfigError("trained_stage: refiner needs refine_masks: true")
        if self.click_box and not self.refine_masks:
            raise ConfigError("click_box: true needs refine_masks: true (the head reads the refiner's FPN)")
        if self.trained_stage == "click_box" and not self.click_box:
            raise ConfigError("trained_stage: click_box needs click_box: true")
        if not 0.0 <= self.centre_click_probability <= 1.0:
            raise ConfigError(f"centre_click_probability: {self.centre_click_probability} must be in [0, 1]")
        if self.refine_box_expansion < 1.0:
            raise ConfigError(f"refine_box_expansion: {self.refine_box_expansion} must be >= 1")
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"{name}: need 3 values (R, G, B), got {getattr(self, name)}")

    @property
    def embedding_size(self) -> int:
        """Cells per side of the image embedding (`image_size / 8`)."""
        return self.image_size // EMBEDDING_STRIDE
