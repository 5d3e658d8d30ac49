"""Benchmark paste_masks_in_image: 100 Mask R-CNN masks (28x28) into an 800x1216 image.

Run: .venv/bin/python benchmarks/bench_ops_paste_masks.py [--repeats 7] [--threads 2]

Rows, side by side in one run (median of the timed runs after a warm-up run):
  torchvision's algorithm   re-implemented below as torchvision writes it: one full zero image per mask, the
                            resized mask copied into it, then all images stacked
  instaseg, float           paste_masks_in_image: one lazily zeroed output, only each box's region computed
  instaseg, threshold=0.5   the same, writing bool masks
  resizing only             the per-mask bilinear resizing alone (what a C++ kernel could speed up)
The last column is the ratio to torchvision's time in ../shared/fixtures/REFERENCE_TIMES.md (< 1: faster).
Boxes: sides 32-400 px, centres uniform in the image (some cross its border).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from instaseg.ops.paste_masks import paste_masks_in_image

REFERENCE_TIMES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "REFERENCE_TIMES.md"
REFERENCE_LABEL = "paste_masks_in_image, 100 masks into 800x1216"
IMAGE_SIZE = (800, 1216)


def inputs(n: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = torch.sigmoid(torch.randn(n, 1, 28, 28, generator=g) * 4)
    centres = torch.rand(n, 2, generator=g) * torch.tensor([IMAGE_SIZE[1], IMAGE_SIZE[0]])
    sides = 32 + torch.rand(n, 2, generator=g) * 368
    return masks, torch.cat((centres - sides / 2, centres + sides / 2), dim=1)


def expanded_regions(boxes: torch.Tensor, mask_size: int) -> list[list[int]]:
    """torchvision's expand_boxes for a 1-pixel padding, truncated to int64: inclusive x0, y0, x1, y1."""
    scale = (mask_size + 2) / mask_size
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    centre_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    centre_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    regions = torch.stack((centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=1)
    return regions.to(torch.int64).tolist()


def resize(mask: torch.Tensor, region: list[int]) -> torch.Tensor:
    x0, y0, x1, y1 = region
    size = (max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1))
    return F.interpolate(mask[None], size=size, mode="bilinear", align_corners=False)[0, 0]


def torchvision_algorithm(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """torchvision's structure: a full zero image per mask, then a stack (the baseline)."""
    padded = F.pad(masks, (1, 1, 1, 1))
    height, width = image_size
    pasted = []
    for mask, region in zip(padded, expanded_regions(boxes, masks.shape[-1]), strict=True):
        x0, y0, x1, y1 = region
        resized = resize(mask, region)
        image = torch.zeros(height, width)
        left, right, top, bottom = max(x0, 0), min(x1 + 1, width), max(y0, 0), min(y1 + 1, height)
        image[top:bottom, left:right] = resized[top - y0 : bottom - y0, left - x0 : right - x0]
        pasted.append(image)
    return torch.stack(pasted)[:, None]


def resizing_only(masks: torch.Tensor, boxes: torch.Tensor) -> None:
    """Only the per-mask bilinear resizing, no output image: what a C++ paste kernel could speed up."""
    padded = F.pad(masks, (1, 1, 1, 1))
    for mask, region in zip(padded, expanded_regions(boxes, masks.shape[-1]), strict=True):
        resize(mask, region)


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def reference_ms() -> float | None:
    if not REFERENCE_TIMES.is_file():
        return None
    for line in REFERENCE_TIMES.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] == REFERENCE_LABEL:
            return float(cells[1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per row (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (REFERENCE_TIMES.md used 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    masks, boxes = inputs()
    expected = torchvision_algorithm(masks, boxes, IMAGE_SIZE)
    as_float = paste_masks_in_image(masks, boxes, IMAGE_SIZE)
    as_bool = paste_masks_in_image(masks, boxes, IMAGE_SIZE, threshold=0.5)
    rows = [  # name, run, output equal to the baseline's ("-": no output)
        (
            "torchvision's algorithm (baseline)",
            lambda: torchvision_algorithm(masks, boxes, IMAGE_SIZE),
            "yes",
        ),
        ("instaseg, float", lambda: paste_masks_in_image(masks, boxes, IMAGE_SIZE), _yes(as_float, expected)),
        (
            "instaseg, threshold=0.5 (bool)",
            lambda: paste_masks_in_image(masks, boxes, IMAGE_SIZE, threshold=0.5),
            _yes(as_bool, expected > 0.5),
        ),
        ("resizing only, no output (lower bound)", lambda: resizing_only(masks, boxes), "-"),
    ]
    reference = reference_ms()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} runs\n")
    print("| case | implementation | same output | median ms | / torchvision |")
    print("|---|---|---|---|---|")
    for name, run, same in rows:
        ms = median_ms(run, args.repeats)
        ratio = f"{ms / reference:.2f}" if reference else "n/a"
        print(f"| {REFERENCE_LABEL} | {name} | {same} | {ms:.1f} | {ratio} |")


def _yes(output: torch.Tensor, expected: torch.Tensor) -> str:
    return "yes" if torch.equal(output, expected) else "NO"


if __name__ == "__main__":
    main()
