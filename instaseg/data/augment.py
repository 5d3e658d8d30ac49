"""Training augmentation applied consistently to an image and its `Instances` (boxes and masks).

Geometry (flips, 90-degree rotations, scale jitter, crop / pad to a fixed window) is composed into one affine
map and applied once: OpenCV's `warpAffine` for the image, and per instance for the masks, on the mask's
bounding-box patch only, so a 1000 x 1400 image with 300 nuclei never needs 300 full-size bitmaps at once.
Flips, rotations and integer shifts sample exactly on pixel centres, so they copy pixels unchanged; scaling
interpolates bilinearly (masks: bilinear, then thresholded at 0.5).

Appearance (after geometry and copy-paste; none of it moves a pixel): brightness / contrast / saturation
jitter, stain jitter in haematoxylin-eosin-DAB space (Tellez et al. 2018, scikit-image's stain matrices),
conversion to grey, intensity inversion and Gaussian blur. The last four are there for images of other
modalities than the training set's: an inverted fluorescence image looks like a brightfield one (dark
nuclei on a light ground), a stain-jittered H&E patch like another lab's.

Coordinates: boxes are `(N, 4) x1y1x2y2` in pixels with the image spanning [0, W] x [0, H] (pixel corners);
the affine maps below use these continuous coordinates. Images are `(H, W, 3) uint8` RGB NumPy arrays (as
`instaseg.io.load_image` returns them). All randomness comes from the `numpy.random.Generator` passed in, so a
sample's augmentation is reproducible from its seed alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from skimage.color import hed_from_rgb, rgb_from_hed

from instaseg.structures.boxes import box_area
from instaseg.structures.instances import Instances
from instaseg.structures.masks import Masks, decode_rle

Sample = tuple[np.ndarray, Instances]

# ITU-R 601 luma weights, as PIL and torchvision use for grayscale.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class AugmentConfig:
    """The `augment` config section; every option off by default.

    - `hflip`, `vflip`: probability of a horizontal / vertical flip.
    - `rot90`: probability of a rotation by 90, 180 or 270 degrees (chosen uniformly).
    - `scale_range`: `[lo, hi]` scale jitter: the image is resized by a factor drawn log-uniformly from this
      range before cropping. Needs `crop_size`: the model resizes every input to its own `min_size`, so
      without a fixed window a global scale change would be undone (use the model's `min_size` list for plain
      multi-scale).
    - `crop_size`: `[H, W]` window taken at a random position; an image smaller than the window is padded with
      black at the bottom / right.
    - `min_visible`: an instance keeps its place only if at least this fraction of its area remains inside the
      crop (or unoccluded by pasted objects); instances with no pixel left are always dropped.
    - `brightness`, `contrast`, `saturation`: jitter strengths `s`, each factor drawn from [1 - s, 1 + s].
    - `copy_paste`: probability of pasting a random subset of another training image's instances on top
      (Simple Copy-Paste, Ghiasi et al. 2021); the other image goes through the same geometric augmentation.
    - `stain`: stain jitter strength `s`: each haematoxylin / eosin / DAB channel of the colour deconvolution
      is scaled by a factor in [1 - s, 1 + s] and shifted by up to +-s/10 (0.05 is a common choice).
    - `grayscale`: probability of replacing the image by its luma in all three channels.
    - `invert`: probability of inverting the intensities (255 - x).
    - `blur`: probability of a Gaussian blur with a sigma (pixels) drawn uniformly from `blur_sigma`.
    """

    hflip: float = 0.0
    vflip: float = 0.0
    rot90: float = 0.0
    scale_range: tuple[float, float] | None = None
    crop_size: tuple[int, int] | None = None
    min_visible: float = 0.25
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    copy_paste: float = 0.0
    stain: float = 0.0
    grayscale: float = 0.0
    invert: float = 0.0
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "rot90", "copy_paste", "min_visible", "grayscale", "invert", "blur"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"'{name}' must be in [0, 1]; got {value}")
        for name in ("brightness", "contrast", "saturation", "stain"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"'{name}' must be in [0, 1); got {value}")
        if self.scale_range is not None:
            lo, hi = self.scale_range
            if not 0 < lo <= hi:
                raise ValueError(
                    f"'scale_range' must be [lo, hi] with 0 < lo <= hi; got {list(self.scale_range)}"
                )
            if self.crop_size is None:
                raise ValueError(
                    "'scale_range' needs 'crop_size': the model resizes every image to its min_size, which "
                    "would undo a global scale change (for plain multi-scale training give the model a "
                    "min_size list)"
                )
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"'blur_sigma' must be [lo, hi] with 0 < lo <= hi; got {list(self.blur_sigma)}")
        if self.crop_size is not None and min(self.crop_size) < 1:
            raise ValueError(f"'crop_size' must be [H, W] with positive sides; got {list(self.crop_size)}")


def augment(
    image: np.ndarray,
    target: Instances,
    config: AugmentConfig,
    rng: np.random.Generator,
    draw_paste_source: Callable[[], Sample] | None = None,
) -> Sample:
    """One random augmentation of `(image, target)` as `config` describes.

    `draw_paste_source()` returns another (image, target) for copy-paste; it is called only when a paste is
    drawn (and required when `config.copy_paste > 0`). Returns a new image and a new `Instances` of the new
    size.
    """
    image, target = _augment_geometry(image, target, config, rng, output_size=None)
    if config.copy_paste > 0 and rng.random() < config.copy_paste:
        if draw_paste_source is None:
            raise ValueError("copy_paste > 0 needs draw_paste_source, a way to draw another training image")
        source_image, source_target = draw_paste_source()
        source_image, source_target = _augment_geometry(
            source_image, source_target, config, rng, output_size=image.shape[:2]
        )
        image, target = copy_paste(image, target, source_image, source_target, rng, config.min_visible)
    image = jitter_colors(image, rng, config.brightness, config.contrast, config.saturation)
    return change_modality(image, config, rng), target


def _augment_geometry(
    image: np.ndarray,
    target: Instances,
    config: AugmentConfig,
    rng: np.random.Generator,
    output_size: tuple[int, int] | None,
) -> Sample:
    """Draw flips, rotation, scale and crop, compose them, warp once; `output_size` forces the final size."""
    height, width = image.shape[:2]
    transform = AffineMap.identity(height, width)
    if rng.random() < config.hflip:
        transform = transform.hflip()
    if rng.random() < config.vflip:
        transform = transform.vflip()
    if rng.random() < config.rot90:
        transform = transform.rot90(int(rng.integers(1, 4)))
    if config.scale_range is not None:
        lo, hi = config.scale_range
        factor = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        transform = transform.scale_to(round(transform.height * factor), round(transform.width * factor))
    if config.crop_size is not None:
        crop_h, crop_w = config.crop_size
        y0 = int(rng.integers(0, transform.height - crop_h + 1)) if transform.height > crop_h else 0
        x0 = int(rng.integers(0, transform.width - crop_w + 1)) if transform.width > crop_w else 0
        transform = transform.crop(y0, x0, crop_h, crop_w)
    if output_size is not None and output_size != (transform.height, transform.width):
        transform = transform.scale_to(*output_size)
    if transform.is_identity():
        return image, target
    return transform.apply(image, target, min_visible=config.min_visible)


@dataclass(frozen=True)
class AffineMap:
    """A map from the input image's continuous pixel coordinates to an output image of (height, width).

    `matrix` is 3x3 and acts on column vectors (x, y, 1); `input_size` is the (H, W) of the image it maps.
    """

    matrix: np.ndarray
    height: int
    width: int
    input_size: tuple[int, int]

    @staticmethod
    def identity(height: int, width: int) -> AffineMap:
        return AffineMap(np.eye(3), height, width, (height, width))

    def _then(self, step: np.ndarray, height: int, width: int) -> AffineMap:
        return AffineMap(step @ self.matrix, height, width, self.input_size)

    def hflip(self) -> AffineMap:
        return self._then(np.array([[-1.0, 0, self.width], [0, 1, 0], [0, 0, 1]]), self.height, self.width)

    def vflip(self) -> AffineMap:
        return self._then(np.array([[1.0, 0, 0], [0, -1, self.height], [0, 0, 1]]), self.height, self.width)

    def rot90(self, k: int) -> AffineMap:
        """Rotate counter-clockwise by `k` quarter turns, as `np.rot90`: (x, y) -> (y, W - x) per turn."""
        result = self
        for _ in range(k % 4):
            step = np.array([[0.0, 1, 0], [-1, 0, result.width], [0, 0, 1]])
            result = result._then(step, result.width, result.height)
        return result

    def scale_to(self, height: int, width: int) -> AffineMap:
        height, width = max(height, 1), max(width, 1)
        step = np.diag([width / self.width, height / self.height, 1.0])
        return self._then(step, height, width)

    def crop(self, y0: int, x0: int, height: int, width: int) -> AffineMap:
        """Take the window whose top-left corner is (x0, y0); parts outside the image become black padding."""
        return self._then(np.array([[1.0, 0, -x0], [0, 1, -y0], [0, 0, 1]]), height, width)

    def is_identity(self) -> bool:
        return (self.height, self.width) == self.input_size and np.array_equal(self.matrix, np.eye(3))

    @property
    def area_scale(self) -> float:
        """How much the map multiplies areas (the product of the axis scales)."""
        return abs(float(np.linalg.det(self.matrix[:2, :2])))

    def index_matrix(
        self, offset_in: tuple[float, float] = (0, 0), offset_out: tuple[float, float] = (0, 0)
    ) -> np.ndarray:
        """The 2x3 matrix OpenCV wants: input pixel indices (shifted by `offset_in` x, y) to output indices.

        Pixel index i has its centre at continuous coordinate i + 0.5, hence the half-pixel shifts.
        """
        shift_in = np.array([[1.0, 0, offset_in[0] + 0.5], [0, 1, offset_in[1] + 0.5], [0, 0, 1]])
        shift_out = np.array([[1.0, 0, -offset_out[0] - 0.5], [0, 1, -offset_out[1] - 0.5], [0, 0, 1]])
        return (shift_out @ self.matrix @ shift_in)[:2]

    def map_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) x1y1x2y2 boxes through the map (all four corners, then their extent), not clipped."""
        if boxes.numel() == 0:
            return boxes.reshape(0, 4).clone()
        x1, y1, x2, y2 = boxes.double().unbind(1)
        corners = torch.stack(
            [torch.stack([x, y], 1) for x, y in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], 1
        )
        matrix = torch.from_numpy(self.matrix)
        mapped = corners @ matrix[:2, :2].T + matrix[:2, 2]
        low = mapped.min(dim=1).values
        high = mapped.max(dim=1).values
        return torch.cat([low, high], dim=1).to(boxes.dtype)

    def apply(self, image: np.ndarray, target: Instances, min_visible: float) -> Sample:
        """Warp the image and the target; drop instances less than `min_visible` inside the output."""
        out_size = (self.height, self.width)
        out_image = cv2.warpAffine(
            image,
            self.index_matrix(),
            (self.width, self.height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        )
        mapped_boxes = self.map_boxes(target.boxes)
        clipped = mapped_boxes.clone()
        clipped[:, 0::2] = clipped[:, 0::2].clamp(0, self.width)
        clipped[:, 1::2] = clipped[:, 1::2].clamp(0, self.height)
        if target.masks is not None:
            masks = Masks.from_bitmaps(self._warp_masks(target.masks))
            area_before = target.masks.area().double() * self.area_scale
            area_after = masks.area().double()
            # A box cut by the window shrinks to what remains of its mask; the others map exactly.
            inside = (mapped_boxes == clipped).all(dim=1, keepdim=True)
            boxes = torch.where(inside, mapped_boxes, masks.boxes().to(mapped_boxes.dtype))
        else:
            masks = None
            area_before = box_area(mapped_boxes).double()
            area_after = box_area(clipped).double()
            boxes = clipped
        keep = (area_after > 0) & (area_after >= min_visible * area_before)
        result = Instances(
            out_size,
            boxes=boxes.to(torch.float32),
            labels=target.labels,
            scores=target.scores,
            masks=masks,
            **target.fields,
        )
        return out_image, result[keep]

    def _warp_masks(self, masks: Masks) -> torch.Tensor:
        """(N, H_out, W_out) bool: each mask's bounding-box patch warped on its own (see module docstring)."""
        out = np.zeros((len(masks), self.height, self.width), dtype=bool)
        for index, bitmap in enumerate(_iter_bitmaps(masks)):
            rows = np.flatnonzero(bitmap.any(axis=1))
            cols = np.flatnonzero(bitmap.any(axis=0))
            if rows.size == 0:
                continue
            # One pixel of zero margin, so bilinear sampling at the patch border sees the true background.
            y1, y2 = max(rows[0] - 1, 0), min(rows[-1] + 2, bitmap.shape[0])
            x1, x2 = max(cols[0] - 1, 0), min(cols[-1] + 2, bitmap.shape[1])
            patch_box = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64)
            ox1, oy1, ox2, oy2 = self.map_boxes(patch_box)[0].tolist()
            ox1, oy1 = max(int(np.floor(ox1)), 0), max(int(np.floor(oy1)), 0)
            ox2, oy2 = min(int(np.ceil(ox2)), self.width), min(int(np.ceil(oy2)), self.height)
            if ox2 <= ox1 or oy2 <= oy1:
                continue
            patch = bitmap[y1:y2, x1:x2].astype(np.uint8) * 255
            matrix = self.index_matrix(offset_in=(x1, y1), offset_out=(ox1, oy1))
            warped = cv2.warpAffine(
                patch,
                matrix,
                (ox2 - ox1, oy2 - oy1),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            out[index, oy1:oy2, ox1:ox2] = warped >= 128
        return torch.from_numpy(out)


def copy_paste(
    image: np.ndarray,
    target: Instances,
    source_image: np.ndarray,
    source_target: Instances,
    rng: np.random.Generator,
    min_visible: float,
) -> Sample:
    """Paste a random non-empty subset of `source_target`'s (non-crowd) instances onto `image`.

    Both images must have the same size and both targets masks. Pasted pixels replace the image's; the
    target's masks lose the covered pixels, and a target instance with less than `min_visible` of its area
    left is dropped (boxes of the others are recomputed from what remains). Returns the composite and
    `Instances.cat([remaining target, pasted])`.
    """
    if image.shape != source_image.shape:
        raise ValueError(f"copy_paste: image shapes differ: {image.shape} and {source_image.shape}")
    if target.masks is None or source_target.masks is None:
        raise ValueError("copy_paste needs instance masks on both images; this dataset has boxes only")
    eligible = np.arange(len(source_target))
    if "iscrowd" in source_target.fields:
        eligible = eligible[source_target.fields["iscrowd"].numpy() == 0]
    if eligible.size == 0:
        return image, target
    count = int(rng.integers(1, eligible.size + 1))
    chosen = source_target[torch.from_numpy(np.sort(rng.choice(eligible, size=count, replace=False)))]
    pasted = chosen.masks.bitmaps().any(dim=0)
    if not bool(pasted.any()):
        return image, target
    composite = image.copy()
    covered = pasted.numpy()
    composite[covered] = source_image[covered]
    area_before = target.masks.area()
    masks = Masks.from_bitmaps(target.masks.bitmaps() & ~pasted)
    area_after = masks.area()
    keep = (area_after > 0) & (area_after.double() >= min_visible * area_before.double())
    occluded = (area_after != area_before)[:, None]
    boxes = torch.where(occluded, masks.boxes(), target.boxes)
    remaining = Instances(
        target.image_size,
        boxes=boxes,
        labels=target.labels,
        scores=target.scores,
        masks=masks,
        **target.fields,
    )
    return composite, Instances.cat([remaining[keep], chosen])


def jitter_colors(
    image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float, saturation: float
) -> np.ndarray:
    """Brightness, contrast and saturation jitter (in that order), each with a factor in [1 - s, 1 + s].

    Brightness scales the pixels; contrast blends with the mean gray level; saturation blends with the pixel's
    own gray value (torchvision's ColorJitter definitions). Strength 0 leaves the image untouched.
    """
    if brightness == contrast == saturation == 0:
        return image
    factors = [float(rng.uniform(1 - s, 1 + s)) if s > 0 else 1.0 for s in (brightness, contrast, saturation)]
    result = image.astype(np.float32)
    result *= factors[0]
    np.clip(result, 0, 255, out=result)
    if factors[1] != 1.0:
        mean = float((result @ _LUMA).mean())
        result = (result - mean) * factors[1] + mean
        np.clip(result, 0, 255, out=result)
    if factors[2] != 1.0:
        gray = (result @ _LUMA)[..., None]
        result = (result - gray) * factors[2] + gray
        np.clip(result, 0, 255, out=result)
    return np.rint(result).astype(np.uint8)


def change_modality(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Stain jitter, grey, inversion and blur, in that order, each drawn with its own probability (see
    `AugmentConfig`). Nothing moves, so the target is unchanged; off options draw no random numbers."""
    if config.stain > 0:
        image = jitter_stain(image, rng, config.stain)
    if config.grayscale > 0 and rng.random() < config.grayscale:
        gray = np.rint(image.astype(np.float32) @ _LUMA).clip(0, 255).astype(np.uint8)
        image = np.repeat(gray[..., None], 3, axis=2)
    if config.invert > 0 and rng.random() < config.invert:
        image = 255 - image
    if config.blur > 0 and rng.random() < config.blur:
        sigma = float(rng.uniform(*config.blur_sigma))
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    return image


def jitter_stain(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Haematoxylin-eosin-DAB stain jitter (Tellez et al. 2018): optical densities projected on the three
    stains (scikit-image's Ruifrok-Johnston matrices), each scaled by alpha in [1 - s, 1 + s] and shifted by
    beta in [-s/10, s/10], then recomposed. Written out rather than through `rgb2hed` / `hed2rgb`, which
    clip negative stain amounts: that is lossy for colours outside the H&E gamut (fluorescence, grey
    images), while this is exactly invertible (alpha 1, beta 0 gives the image back)."""
    alpha = rng.uniform(1 - strength, 1 + strength, size=3)
    beta = rng.uniform(-strength / 10, strength / 10, size=3)
    density = -np.log(np.maximum(image, 1).astype(np.float64) / 255.0)
    stains = (density @ hed_from_rgb) * alpha + beta
    recomposed = 255.0 * np.exp(-(stains @ rgb_from_hed))
    return np.rint(recomposed).clip(0, 255).astype(np.uint8)


def _iter_bitmaps(masks: Masks):
    """Each instance's (H, W) bool mask, decoded one at a time (never all N full-size bitmaps at once)."""
    if masks.form == Masks.BITMAPS:
        yield from masks.bitmaps().cpu().numpy()
        return
    for rle in masks.rles():
        yield decode_rle([rle], masks.image_size)[0]
