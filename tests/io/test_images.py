"""load_image / read_image_size / to_tensor on every supported source, mode and failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.io import ImageReadError, load_image, read_image_size, to_tensor
from instaseg.io.images import load_image_bytes

ORIENTATION = 0x0112


def _gradient(height: int = 6, width: int = 8) -> np.ndarray:
    """(H, W, 3) uint8 with distinct values per pixel and channel."""
    values = np.arange(height * width * 3, dtype=np.int64).reshape(height, width, 3)
    return (values * 7 % 256).astype(np.uint8)


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    loaded = load_image(tmp_path / "rgb.png")
    assert loaded.dtype == np.uint8 and loaded.shape == (6, 8, 3)
    np.testing.assert_array_equal(loaded, rgb)
    assert read_image_size(tmp_path / "rgb.png") == (6, 8)


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    gray = _gradient()[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    loaded = load_image(str(tmp_path / "gray.png"))
    np.testing.assert_array_equal(loaded, np.repeat(gray[:, :, None], 3, axis=2))


def test_one_bit_image(tmp_path: Path) -> None:
    bits = np.zeros((5, 7), dtype=bool)
    bits[1:3, 2:6] = True
    Image.fromarray(bits).convert("1").save(tmp_path / "bits.png")
    loaded = load_image(tmp_path / "bits.png")
    np.testing.assert_array_equal(loaded[:, :, 1], np.where(bits, 255, 0))


def test_palette_image_uses_palette_colours(tmp_path: Path) -> None:
    image = Image.new("P", (4, 3))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((2, 1), 1)
    image.save(tmp_path / "palette.png")
    loaded = load_image(tmp_path / "palette.png")
    assert loaded[0, 0].tolist() == [10, 20, 30]
    assert loaded[1, 2].tolist() == [200, 100, 50]


def test_palette_with_transparency_drops_alpha(tmp_path: Path) -> None:
    image = Image.new("P", (4, 3))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((0, 0), 1)
    image.save(tmp_path / "palette_t.png", transparency=1)
    loaded = load_image(tmp_path / "palette_t.png")
    assert loaded[0, 0].tolist() == [200, 100, 50]  # transparent colour kept as stored, not composited
    assert loaded[2, 3].tolist() == [10, 20, 30]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_not_composited(tmp_path: Path, mode: str) -> None:
    rgba = np.dstack([_gradient(), np.full((6, 8), 0, dtype=np.uint8)])  # fully transparent
    image = Image.fromarray(rgba, mode="RGBA").convert(mode)
    image.save(tmp_path / f"{mode}.png")
    loaded = load_image(tmp_path / f"{mode}.png")
    expected = np.array(image.convert("RGBA"))[:, :, :3]
    np.testing.assert_array_equal(loaded, expected)
    assert loaded.any()  # compositing over black would have zeroed everything


def test_sixteen_bit_png_keeps_high_byte(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 0x1234], [0x8000, 0xFF00, 0xFFFF, 511]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    loaded = load_image(tmp_path / "deep.png")
    expected = np.array([[0, 0, 1, 0x12], [0x80, 0xFF, 0xFF, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(loaded[:, :, 0], expected)
    np.testing.assert_array_equal(loaded[:, :, 2], expected)


def test_sixteen_bit_big_endian_pil_image() -> None:
    values = np.array([[0x0102, 0xA0B0]], dtype=">u2")
    image = Image.frombytes("I;16B", (2, 1), values.tobytes())
    assert image.mode == "I;16B"
    np.testing.assert_array_equal(load_image(image)[0, :, 0], [0x01, 0xA0])


def test_thirty_two_bit_integer_mode(tmp_path: Path) -> None:
    values = np.array([[0, 300, 65535]], dtype=np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    image.save(tmp_path / "int32.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "int32.tif")[0, :, 1], [0, 1, 255])
    with pytest.raises(ImageReadError, match="do not fit 16 bits"):
        load_image(Image.fromarray(np.array([[70000]], dtype=np.int32)))


def test_float_mode_image(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32))
    assert image.mode == "F"
    image.save(tmp_path / "float.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "float.tif")[0, :, 0], [0, 64, 255])


def test_cmyk_converts_to_rgb(tmp_path: Path) -> None:
    image = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # no ink: white
    image.paste((255, 0, 0, 0), (0, 0, 8, 16))  # full cyan: no red
    image.save(tmp_path / "cmyk.tif")
    loaded = load_image(tmp_path / "cmyk.tif")
    assert loaded[0, 12].tolist() == [255, 255, 255]
    assert loaded[0, 0].tolist() == [0, 255, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # stored 20 high, 40 wide
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)

    loaded = load_image(tmp_path / "rotated.jpg")
    assert loaded.shape == (40, 20, 3)
    assert read_image_size(tmp_path / "rotated.jpg") == (40, 20)
    # Clockwise rotation moves the left (red) half to the top.
    top, bottom = loaded[:15].mean(axis=(0, 1)), loaded[25:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_pil_image_source_gets_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    Image.fromarray(_gradient(10, 30)).save(tmp_path / "o8.jpg", exif=exif.tobytes())
    with Image.open(tmp_path / "o8.jpg") as image:
        assert load_image(image).shape == (30, 10, 3)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((2, 3), 9, dtype=np.uint8), 9),
        (np.full((2, 3, 1), 9, dtype=np.uint8), 9),
        (np.full((2, 3, 3), 9, dtype=np.uint8), 9),
        (np.dstack([np.full((2, 3, 3), 9, dtype=np.uint8), np.zeros((2, 3), np.uint8)]), 9),
        (np.full((2, 3, 3), 0x0900, dtype=np.uint16), 9),
        (np.full((2, 3), 9 / 255, dtype=np.float32), 9),
        (np.full((2, 3, 3), 9 / 255, dtype=np.float64), 9),
    ],
    ids=["hw", "hw1", "hw3", "hw4", "uint16", "float32", "float64"],
)
def test_numpy_sources(array: np.ndarray, expected: int) -> None:
    loaded = load_image(array)
    assert loaded.shape == (2, 3, 3) and loaded.dtype == np.uint8
    assert (loaded == expected).all()


def test_result_never_aliases_the_input_array() -> None:
    array = np.zeros((2, 2, 3), dtype=np.uint8)
    load_image(array)[0, 0, 0] = 99
    assert array[0, 0, 0] == 0


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 3, 2), dtype=np.uint8), "expected shape"),
        (np.zeros((3, 2, 3, 1), dtype=np.uint8), "expected shape"),
        (np.full((2, 2), 1.5, dtype=np.float32), r"must lie in \[0, 1\]"),
        (np.full((2, 2), np.nan, dtype=np.float32), "NaN"),
        (np.full((2, 2), -1, dtype=np.int64), "do not fit 16 bits"),
        (np.zeros((2, 2), dtype=np.complex64), "unsupported sample dtype"),
    ],
)
def test_bad_arrays_are_refused(array: np.ndarray, message: str) -> None:
    with pytest.raises(ImageReadError, match=message):
        load_image(array)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match="no such file") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image_size(path)


def test_zero_byte_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_non_image_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image at all\n")
    with pytest.raises(ImageReadError, match="not an image") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not a regular file"):
        load_image(tmp_path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_caught_on_decode(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)  # incompressible: the cut hits pixel data
    full = tmp_path / f"full{suffix}"
    Image.fromarray(noisy).save(full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])

    with pytest.raises(ImageReadError, match="truncated") as info:
        load_image(cut)
    assert str(cut) in str(info.value)
    with Image.open(cut) as lazy, pytest.raises(ImageReadError, match="truncated"):
        load_image(lazy)  # a lazily opened PIL image fails the same way
    # The header is intact, so the header-only size read still works: proof that it does not decode.
    assert read_image_size(cut) == (64, 64)


def test_bytes_decode_as_the_file_does(tmp_path: Path) -> None:
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(_gradient(6, 8)).save(rotated, exif=exif.tobytes(), quality=95)
    paletted = tmp_path / "p.png"
    Image.fromarray(_gradient()).convert("P").save(paletted)
    for path in (rotated, paletted):
        np.testing.assert_array_equal(load_image_bytes(path.read_bytes(), str(path)), load_image(path))
    noisy = tmp_path / "noisy.png"  # incompressible: half of it cuts into the pixel data, not the header
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noisy)
    full = noisy.read_bytes()
    for data, reason in (
        (b"", "empty"),
        (b"not an image", "not an image"),
        (full[: len(full) // 2], "trunc"),
    ):
        with pytest.raises(ImageReadError, match=f"cannot read image s3://b/x.png: .*{reason}"):
            load_image_bytes(data, "s3://b/x.png")


def test_to_tensor_layout_and_range() -> None:
    image = _gradient(4, 5)
    tensor = to_tensor(image)
    assert tensor.shape == (3, 4, 5) and tensor.dtype == torch.float32
    assert tensor[1, 2, 3].item() == pytest.approx(image[2, 3, 1] / 255.0)
    assert tensor.min().item() >= 0.0 and tensor.max().item() <= 1.0


@pytest.mark.parametrize("bad", [np.zeros((4, 5), np.uint8), np.zeros((4, 5, 3), np.float32), [[1, 2]]])
def test_to_tensor_refuses_other_inputs(bad: object) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        to_tensor(bad)


def test_real_nuclei_image(dsb_root: Path, dsb_image_ids: list[str]) -> None:
    path = dsb_root / dsb_image_ids[0] / "images" / f"{dsb_image_ids[0]}.png"
    with Image.open(path) as raw:
        assert raw.mode == "RGBA"
        expected = np.array(raw)[:, :, :3]
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded, expected)
    assert read_image_size(path) == loaded.shape[:2]
