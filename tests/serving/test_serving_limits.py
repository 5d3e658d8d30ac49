"""Upload checks: formats, sizes, decompression bombs refused from the header, base64, server-side paths."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.serving.config import LimitsConfig
from instaseg.serving.errors import BadInput, PayloadTooLarge, UnsupportedMedia
from instaseg.serving.limits import decode_base64, decode_image_bytes, read_server_path

LIMITS = LimitsConfig(max_body_bytes=200_000, max_image_pixels=250_000, max_batch_images=4)


def encode(array: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
def test_lossless_formats_decode_exactly(rgb: np.ndarray, fmt: str) -> None:
    data = encode(rgb, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    decoded = decode_image_bytes(data, "upload", LIMITS)
    assert decoded.format == fmt
    assert np.array_equal(decoded.image, rgb)
    assert decoded.size == (30, 40)
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()


def test_jpeg_and_rgba_and_grayscale_go_through_load_image(rgb: np.ndarray) -> None:
    assert decode_image_bytes(encode(rgb, "JPEG"), "upload", LIMITS).image.shape == (30, 40, 3)
    rgba = np.dstack([rgb, np.full((30, 40), 255, np.uint8)])
    assert np.array_equal(decode_image_bytes(encode(rgba, "PNG"), "upload", LIMITS).image, rgb)
    grey = decode_image_bytes(encode(rgb[:, :, 0], "PNG"), "upload", LIMITS).image
    assert np.array_equal(grey, np.repeat(rgb[:, :, :1], 3, axis=2))


def test_empty_garbage_and_other_formats(rgb: np.ndarray) -> None:
    with pytest.raises(BadInput, match="upload: the image is empty") as empty:
        decode_image_bytes(b"", "upload", LIMITS)
    assert empty.value.kind == "empty_image"
    with pytest.raises(UnsupportedMedia, match="not an image") as garbage:
        decode_image_bytes(b"%PDF-1.4 definitely not pixels", "upload", LIMITS)
    assert garbage.value.status == 415 and garbage.value.kind == "not_an_image"
    with pytest.raises(UnsupportedMedia, match="GIF images are not accepted") as gif:
        decode_image_bytes(encode(rgb, "GIF"), "upload", LIMITS)
    assert gif.value.kind == "unsupported_format"
    only_png = LimitsConfig(allowed_formats=("PNG",))
    with pytest.raises(UnsupportedMedia, match="JPEG images are not accepted"):
        decode_image_bytes(encode(rgb, "JPEG"), "upload", only_png)


def test_truncated_image_is_a_bad_request_naming_the_source(rgb: np.ndarray) -> None:
    data = encode(rgb, "PNG")
    with pytest.raises(BadInput, match="images\\[2\\] \\(cells.png\\): decoding failed") as truncated:
        decode_image_bytes(data[: len(data) // 2], "images[2] (cells.png)", LIMITS)
    assert truncated.value.status == 400 and truncated.value.kind == "corrupt_image"


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = encode(np.zeros((1000, 1000), dtype=np.uint8), "PNG")  # 1 Mpixel in about 1 KB
    assert len(bomb) < 5_000
    with pytest.raises(PayloadTooLarge, match="1000000 pixels") as error:
        decode_image_bytes(bomb, "upload", LIMITS)
    assert error.value.status == 413 and error.value.kind == "too_many_pixels"
    # Proof that nothing was decoded: the same header followed by broken pixel data gets the same answer,
    # where a full decode would have failed as corrupt.
    with pytest.raises(PayloadTooLarge, match="1000000 pixels") as header_only:
        decode_image_bytes(bomb[:100], "upload", LIMITS)
    assert header_only.value.kind == "too_many_pixels"


def test_oversized_bytes() -> None:
    with pytest.raises(PayloadTooLarge, match="over the limit of 200000") as error:
        decode_image_bytes(b"\x89PNG" + b"\0" * 200_000, "upload", LIMITS)
    assert error.value.kind == "body_too_large"


def test_base64_plain_and_data_url(rgb: np.ndarray) -> None:
    data = encode(rgb, "PNG")
    text = base64.b64encode(data).decode()
    assert decode_base64(text, "image.image_base64", LIMITS) == data
    assert decode_base64("data:image/png;base64," + text, "image.image_base64", LIMITS) == data
    with pytest.raises(BadInput, match="image.image_base64: not valid base64") as error:
        decode_base64("not base64 at all!", "image.image_base64", LIMITS)
    assert error.value.kind == "bad_base64"
    with pytest.raises(BadInput, match="must be base64-encoded"):
        decode_base64("data:image/png,abc", "image.image_base64", LIMITS)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.png").write_bytes(b"inside")
    (tmp_path / "secret.png").write_bytes(b"outside")
    os.symlink(tmp_path / "secret.png", folder / "link.png")
    return folder


def test_paths_inside_the_root_are_read(root: Path) -> None:
    assert read_server_path(root, "sub/a.png", "image.path", LIMITS) == b"inside"
    assert read_server_path(root, "sub/../sub/a.png", "image.path", LIMITS) == b"inside"
    assert read_server_path(root, str(root / "sub" / "a.png"), "image.path", LIMITS) == b"inside"


@pytest.mark.parametrize("requested", ["../secret.png", "sub/../../secret.png", "link.png", "/etc/passwd"])
def test_paths_never_escape_the_root(root: Path, requested: str) -> None:
    with pytest.raises(BadInput, match="is outside the allowed root") as error:
        read_server_path(root, requested, "image.path", LIMITS)
    assert error.value.kind == "path_outside_root"
    assert str(root) not in str(error.value)  # the server's folder layout is not revealed


def test_path_errors(root: Path) -> None:
    with pytest.raises(BadInput, match="no file 'sub/missing.png'") as missing:
        read_server_path(root, "sub/missing.png", "image.path", LIMITS)
    assert missing.value.kind == "path_not_found"
    with pytest.raises(BadInput, match="no file 'sub'"):
        read_server_path(root, "sub", "image.path", LIMITS)
    with pytest.raises(BadInput, match="server-side paths are disabled") as disabled:
        read_server_path(None, "sub/a.png", "image.path", LIMITS)
    assert disabled.value.kind == "path_disabled"
    with pytest.raises(BadInput, match="unusable path"):
        read_server_path(root, "sub/\0a.png", "image.path", LIMITS)
    (root / "big.png").write_bytes(b"\0" * 200_001)
    with pytest.raises(PayloadTooLarge, match="'big.png' is 200001 bytes"):
        read_server_path(root, "big.png", "image.path", LIMITS)
