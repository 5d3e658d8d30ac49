"""Read images from disk, arrays or PIL objects into one canonical form: (H, W, 3) uint8 RGB.

Every model, dataset and tool in instaseg calls `load_image`, so the conversion rules live here once:

- EXIF orientation is applied (the pixels come out the way a photo viewer shows them);
- grayscale, palette and 1-bit images are replicated / expanded to 3 channels;
- an alpha channel is dropped, not composited over a background (RGBA -> RGB keeps the stored colours);
- 16-bit data is reduced to 8 bit by keeping the high byte (`value >> 8`), so 0..65535 maps to 0..255 without
  looking at the image's own range (no per-image contrast stretch, so two images stay comparable);
- float data must lie in [0, 1] and is scaled by 255 and rounded.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "images_in_folder",
    "is_image_file",
    "load_image",
    "load_image_bytes",
    "read_image_size",
    "to_tensor",
]

ImageSource = str | Path | np.ndarray | Image.Image
# File suffixes (lower case) that folders of images are searched for, here and in the dataset readers.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

# Pillow modes that carry 16-bit (or 32-bit integer) samples.
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_EXIF_ORIENTATION_TAG = 0x0112
# Orientations 5..8 swap width and height (the image is stored rotated by 90 degrees).
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class ImageReadError(ValueError):
    """An image could not be read or converted; the message names the source and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


def load_image(source: ImageSource) -> np.ndarray:
    """Load `source` as a (H, W, 3) uint8 RGB array (a new array, never a view of the input).

    `source` is a file path, a PIL image, or a NumPy array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
    with dtype uint8, uint16 (reduced by `>> 8`) or float (values in [0, 1], scaled by 255). Files and PIL
    images get their EXIF orientation applied. Raises `ImageReadError` for a missing, empty, truncated or
    non-image file, and for arrays of an unsupported shape, dtype or value range.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, _describe_array(source))
    if isinstance(source, Image.Image):
        name = str(getattr(source, "filename", "") or f"<PIL image mode={source.mode} size={source.size}>")
        try:
            source.load()  # a lazily opened image decodes here; truncation is reported as such
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageReadError(name, f"decoding failed, the file is truncated or corrupt ({exc})") from exc
        return _pil_to_rgb(source, name)
    if isinstance(source, str | Path):
        path = Path(source)
        with _open_checked(path) as image:
            return _decode_opened(image, str(path))
    raise TypeError(f"load_image expects a path, a numpy array or a PIL image, got {type(source).__name__}")


def load_image_bytes(data: bytes, name: str) -> np.ndarray:
    """The image file whose bytes are `data`, as `load_image` loads that file: (H, W, 3) uint8 RGB, by the
    same rules and with the same `ImageReadError`s; `name` (e.g. the file's path) names it in them."""
    if not data:
        raise ImageReadError(name, "the file is empty (0 bytes)")
    with _open_pil(io.BytesIO(data), name) as image:
        return _decode_opened(image, name)


def _decode_opened(image: Image.Image, name: str) -> np.ndarray:
    try:
        image.load()  # force the full decode now so a truncated file fails here, with its name
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(name, f"decoding failed, the file is truncated or corrupt ({exc})") from exc
    return _pil_to_rgb(image, name)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the image at `path` as `load_image` returns it (EXIF rotation included), from the header.

    Only the header (and the EXIF block where the format keeps it there) is read: cheap on large files.
    """
    path = Path(path)
    with _open_checked(path) as image:
        width, height = image.size
        if _exif_orientation_from_header(image) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        return height, width


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB array -> float32 tensor (3, H, W) with values in [0, 1], the models' input form."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = _describe_array(image) if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"to_tensor expects a (H, W, 3) uint8 array (use load_image first), got {got}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def _open_checked(path: Path) -> Image.Image:
    """Open `path` lazily with Pillow, turning every failure into an ImageReadError that names the file."""
    if not path.exists():
        raise ImageReadError(str(path), "no such file")
    if not path.is_file():
        raise ImageReadError(str(path), "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(str(path), "the file is empty (0 bytes)")
    return _open_pil(path, str(path))


def _open_pil(source: Path | io.BytesIO, name: str) -> Image.Image:
    try:
        return Image.open(source)
    except UnidentifiedImageError as exc:
        raise ImageReadError(name, "not an image format Pillow can read") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, f"refused as a possible decompression bomb ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(name, f"the header could not be parsed ({exc})") from exc


def _exif_orientation_from_header(image: Image.Image) -> int:
    # PNG keeps EXIF in an eXIf chunk; Pillow's PNG getexif() decodes the whole image to find a chunk placed
    # after the pixel data, so for PNG only an EXIF block already seen while parsing the header is used.
    if image.format == "PNG":
        raw = image.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
    else:
        exif = image.getexif()
    return int(exif.get(_EXIF_ORIENTATION_TAG, 1))


def _pil_to_rgb(image: Image.Image, name: str) -> np.ndarray:
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(name, f"applying the EXIF orientation failed ({exc})") from exc
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        return _array_to_rgb(np.asarray(image), name)
    if mode == "F":
        return _array_to_rgb(np.asarray(image), name)
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    try:
        if (
            "A" in image.getbands()
            or "a" in image.getbands()
            or (mode == "P" and "transparency" in image.info)
        ):
            # Via RGBA so Pillow resolves palettes / premultiplied alpha, then drop alpha (no compositing).
            return np.array(image.convert("RGBA"), dtype=np.uint8)[:, :, :3].copy()
        return np.array(image.convert("RGB"), dtype=np.uint8)  # L, 1, P, CMYK, YCbCr, LAB, HSV ...
    except (OSError, ValueError) as exc:
        raise ImageReadError(name, f"cannot convert Pillow mode {mode!r} to RGB ({exc})") from exc


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        channels = array.shape[2]
    elif array.ndim == 2:
        channels = 1
    else:
        raise ImageReadError(name, "expected shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if array.ndim == 3:
        array = array[:, :, :3] if channels == 4 else array  # alpha dropped, not composited
    array = _to_uint8(array, name)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Sample values -> uint8 by the module's rules; always returns a new array."""
    if array.dtype == np.uint8:
        return array.copy()
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        # uint16 and Pillow's 16-bit modes; also Pillow's 32-bit "I" mode, which is how 16-bit PNGs and TIFFs
        # are often delivered, so its values must fit in 16 bits for the same `>> 8` rule to mean anything.
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ImageReadError(
                name,
                f"integer samples in [{array.min()}, {array.max()}] do not fit 16 bits; only 8- and 16-bit "
                "data is supported",
            )
        return (array.astype(np.uint32) >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageReadError(name, "float samples contain NaN or infinity")
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise ImageReadError(
                name, f"float samples must lie in [0, 1], found [{array.min():.4g}, {array.max():.4g}]"
            )
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    raise ImageReadError(name, f"unsupported sample dtype {array.dtype}")


def _describe_array(array: np.ndarray) -> str:
    return f"<array shape={tuple(array.shape)} dtype={array.dtype}>"


def is_image_file(path: Path) -> bool:
    """A visible file with one of `IMAGE_SUFFIXES`, in any case."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def images_in_folder(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively (hidden files skipped), in natural sort order."""
    return sorted((p for p in folder.rglob("*") if is_image_file(p)), key=natural_sort_key)


def natural_sort_key(path: Path) -> list[object]:
    # "frame_2.png" sorts before "frame_10.png": digits compare as numbers.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]
