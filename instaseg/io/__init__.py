"""Image input: every image enters instaseg through `load_image` as (H, W, 3) uint8 RGB."""

from instaseg.io.images import ImageReadError, load_image, read_image_size, to_tensor

__all__ = ["ImageReadError", "load_image", "read_image_size", "to_tensor"]
