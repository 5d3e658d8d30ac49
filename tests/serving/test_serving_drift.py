"""Drift: image features, the PSI formula, reference round trip, and the rolling monitor on real images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from instaseg.io.images import load_image
from instaseg.serving.drift import FEATURES, DriftMonitor, ReferenceStats, image_statistics, psi


def test_psi_matches_the_formula() -> None:
    # (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5), by hand.
    expected = 0.4 * math.log(1.8) + 0.4 * math.log(5.0)
    assert psi(np.array([5, 5]), np.array([9, 1])) == pytest.approx(expected)
    assert psi(np.array([1, 2, 3]), np.array([10, 20, 30])) == pytest.approx(0.0, abs=1e-12)
    # An empty bin on one side is floored, not infinite.
    assert math.isfinite(psi(np.array([1, 0]), np.array([0, 1])))


def test_image_statistics_of_known_images() -> None:
    grey = np.full((40, 60, 3), 100, dtype=np.uint8)
    stats = image_statistics(grey)
    assert stats.brightness == pytest.approx(100.0, abs=1e-3)
    assert stats.contrast == pytest.approx(0.0, abs=1e-3)
    assert stats.size == pytest.approx(math.sqrt(40 * 60))
    assert stats.colour.shape == (3, 16)
    assert np.allclose(stats.colour.sum(axis=1), 1.0)
    assert np.all(stats.colour[:, 100 // 16] == 1.0)  # every pixel in bin 6 of each channel

    halves = np.zeros((10, 10, 3), dtype=np.uint8)
    halves[:, 5:] = 255
    stats = image_statistics(halves)
    assert stats.brightness == pytest.approx(127.5, abs=0.01)
    assert stats.contrast == pytest.approx(127.5, abs=0.01)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        image_statistics(np.zeros((4, 4), dtype=np.uint8))


def _dsb_images(dsb_root: Path, ids: list[str]) -> list[np.ndarray]:
    return [load_image(dsb_root / i / "images" / f"{i}.png") for i in ids]


def test_monitor_is_quiet_on_the_reference_population_and_flags_a_shift(
    dsb_root: Path, dsb_image_ids: list[str]
) -> None:
    images = _dsb_images(dsb_root, dsb_image_ids)
    scores = np.linspace(0.5, 0.99, 20)
    reference = ReferenceStats.from_images([image_statistics(i) for i in images], scores)

    same = DriftMonitor(reference, window=50)
    for image in images:
        same.add(image_statistics(image), scores)
    values = same.psi_scores()
    assert set(values) == set(FEATURES)
    assert max(values.values()) < 1e-6  # the very same population: no drift at all

    shifted = DriftMonitor(reference, window=50)
    for image in images:
        brighter = 255 - image  # inverted microscopy: bright background, as a different stain would give
        shifted.add(image_statistics(brighter), scores * 0.5)
    values = shifted.psi_scores()
    assert values["brightness"] > 0.25 and values["colour"] > 0.25 and values["score"] > 0.25
    assert values["size"] < 1e-6  # same sizes

    assert reference.images == len(images)


def test_window_keeps_only_recent_images() -> None:
    dark = image_statistics(np.full((32, 32, 3), 20, dtype=np.uint8))
    light = image_statistics(np.full((32, 32, 3), 220, dtype=np.uint8))
    reference = ReferenceStats.from_images([dark], [0.9])
    monitor = DriftMonitor(reference, window=3)
    for _ in range(5):
        monitor.add(light, np.array([0.9]))
    assert monitor.psi_scores()["brightness"] > 1.0
    for _ in range(3):
        assert monitor.add(dark, np.array([0.9])) >= 6
    assert len(monitor) == 3
    assert monitor.psi_scores()["brightness"] == pytest.approx(0.0, abs=1e-12)


def test_features_without_values_are_left_out() -> None:
    stats = image_statistics(np.full((8, 8, 3), 50, dtype=np.uint8))
    monitor = DriftMonitor(ReferenceStats.from_images([stats], [0.7, 0.8]), window=10)
    monitor.add(stats, np.array([]))  # nothing detected in the window
    assert "score" not in monitor.psi_scores() and "brightness" in monitor.psi_scores()


def test_reference_round_trips_through_json() -> None:
    stats = [image_statistics(np.full((16, 24, 3), v, dtype=np.uint8)) for v in (10, 90, 200)]
    reference = ReferenceStats.from_images(stats, [0.2, 0.6, 0.95])
    text = json.dumps(reference.to_dict(), allow_nan=False)  # strict JSON: no Infinity in the size edges
    restored = ReferenceStats.from_dict(json.loads(text))
    assert restored.images == 3
    for name in FEATURES:
        assert np.array_equal(restored.histograms[name], reference.histograms[name])


def test_malformed_reference_names_the_problem() -> None:
    good = ReferenceStats.from_images([image_statistics(np.zeros((8, 8, 3), np.uint8))], [0.5]).to_dict()
    missing = json.loads(json.dumps(good))
    del missing["features"]["contrast"]
    with pytest.raises(ValueError, match="model v3: malformed, missing 'contrast'"):
        ReferenceStats.from_dict(missing, "model v3")
    rebinned = json.loads(json.dumps(good))
    rebinned["features"]["score"]["edges"] = [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="feature 'score' was binned differently"):
        ReferenceStats.from_dict(rebinned)
    with pytest.raises(ValueError, match="at least one image"):
        ReferenceStats.from_images([], [])
