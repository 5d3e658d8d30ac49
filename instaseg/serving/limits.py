"""Validate what a request carries before the expensive work: bytes, base64 text, server-side paths.

Order of checks for image bytes: empty -> header parse (Pillow reads only the header here) -> format
allowed -> width x height within `max_image_pixels` -> full decode by `instaseg.io.images.load_image`. So a
decompression bomb (a small file that decodes to gigapixels) is refused from its header, never decoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from instaseg.io.images import ImageReadError, load_image
from instaseg.serving.config import LimitsConfig
from instaseg.serving.errors import BadInput, PayloadTooLarge, UnsupportedMedia

__all__ = [
    "DecodedImage",
    "decode_base64",
    "decode_image_bytes",
    "read_server_path",
    "set_decompression_limit",
]


@dataclass(frozen=True)
class DecodedImage:
    """An accepted upload: `image` (H, W, 3) uint8 RGB, where it came from, its container format, the SHA-256
    of the bytes (for the prediction log) and the bytes themselves."""

    image: np.ndarray
    source: str
    format: str
    sha256: str
    data: bytes

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


def set_decompression_limit(max_image_pixels: int | None) -> int | None:
    """Set Pillow's process-wide decompression-bomb guard (it warns above this many pixels and refuses twice
    as many), a second line of defence behind the header check in `decode_image_bytes`. Returns the previous
    value, so that an embedded service can put it back when it stops."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_image_pixels
    return previous


def decode_image_bytes(data: bytes, source: str, limits: LimitsConfig) -> DecodedImage:
    """Check and decode an uploaded image; raises `BadInput` (400), `PayloadTooLarge` (413) or
    `UnsupportedMedia` (415) naming `source` (the form field / file name / JSON position)."""
    if not data:
        raise BadInput(f"{source}: the image is empty (0 bytes)", "empty_image")
    if len(data) > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"{source}: {len(data)} bytes, over the limit of {limits.max_body_bytes}", "body_too_large"
        )
    try:
        header = Image.open(io.BytesIO(data))  # parses the header only; pixels are decoded by load() later
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(
            f"{source}: refused as a decompression bomb ({exc})", "too_many_pixels"
        ) from None
    except UnidentifiedImageError:
        raise UnsupportedMedia(
            f"{source}: not an image (no {', '.join(limits.allowed_formats)} header found)", "not_an_image"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"{source}: the image header is corrupt ({exc})", "corrupt_image") from None
    image_format = header.format or "unknown"
    if image_format not in limits.allowed_formats:
        raise UnsupportedMedia(
            f"{source}: {image_format} images are not accepted; allowed: {', '.join(limits.allowed_formats)}",
            "unsupported_format",
        )
    width, height = header.size
    if width * height > limits.max_image_pixels:
        raise PayloadTooLarge(
            f"{source}: {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_image_pixels}",
            "too_many_pixels",
        )
    if width == 0 or height == 0:
        raise BadInput(f"{source}: the image has no pixels ({width}x{height})", "corrupt_image")
    try:
        image = load_image(header)
    except ImageReadError as exc:
        raise BadInput(f"{source}: {exc.reason}", "corrupt_image") from None
    return DecodedImage(image, source, image_format, hashlib.sha256(data).hexdigest(), data)


def decode_base64(text: str, source: str, limits: LimitsConfig) -> bytes:
    """Standard base64 (a `data:image/...;base64,` prefix is accepted) -> bytes; `BadInput` when malformed."""
    if text.startswith("data:"):
        prefix, _, text = text.partition(",")
        if not prefix.endswith(";base64"):
            raise BadInput(
                f"{source}: a data URL must be base64-encoded (data:<type>;base64,...)", "bad_base64"
            )
    if len(text) * 3 // 4 > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"{source}: the decoded image would exceed {limits.max_body_bytes} bytes", "body_too_large"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(f"{source}: not valid base64 ({exc})", "bad_base64") from None


def read_server_path(root: str | Path | None, requested: str, source: str, limits: LimitsConfig) -> bytes:
    """Bytes of `requested`, a path relative to the configured `root`, which it may never leave (symbolic
    links and `..` are resolved first; absolute paths must also lie inside `root`)."""
    if root is None:
        raise BadInput(
            f"{source}: server-side paths are disabled (the service has no path_root)", "path_disabled"
        )
    try:
        base = Path(root).resolve()
        candidate = (base / requested).resolve()
    except (OSError, ValueError) as exc:
        raise BadInput(f"{source}: unusable path {requested!r} ({exc})", "bad_path") from None
    if not candidate.is_relative_to(base):
        raise BadInput(f"{source}: path {requested!r} is outside the allowed root", "path_outside_root")
    try:  # a name too long for the file system raises here, not in resolve()
        size = candidate.stat().st_size if candidate.is_file() else None
    except OSError as exc:
        raise BadInput(f"{source}: unusable path {requested!r} ({exc.strerror or exc})", "bad_path") from None
    if size is None:
        raise BadInput(f"{source}: no file {requested!r} under the allowed root", "path_not_found")
    if size > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"{source}: {requested!r} is {size} bytes, over {limits.max_body_bytes}", "body_too_large"
        )
    try:
        return candidate.read_bytes()
    except OSError as exc:
        raise BadInput(
            f"{source}: cannot read {requested!r} ({exc.strerror or exc})", "path_unreadable"
        ) from None
