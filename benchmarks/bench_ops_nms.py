"""Benchmark nms and batched_nms: C++ kernel vs pure PyTorch, and the batched strategies, side by side.

Run: .venv/bin/python benchmarks/bench_ops_nms.py [--repeats 9] [--threads 2]

Boxes as in ../shared/fixtures/REFERENCE_TIMES.md: 50 base boxes (centres uniform in an 800x1216 image,
sides 4-300 px) jittered with sigma = 8 px per coordinate, random scores; 2 threads; median of the timed runs
after a warm-up run. The last column is the ratio to torchvision's time in REFERENCE_TIMES.md (< 1: faster).

batched_nms strategies (the library uses the fastest exact one on each path):
  kernel            torch.ops.instaseg.batched_nms: categories grouped and run in parallel in C++
  offset + kernel   torchvision's trick: shift each category's boxes by idx * (max coordinate + 1), one nms
  loop + kernel     one nms call per category
  loop + torch      batched_nms_torch: one nms_torch call per category
  offset + torch    the offset trick through nms_torch
"exact" says whether the kept indices equal the per-category reference (the offset trick rounds coordinates).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from instaseg.ops import _extension
from instaseg.ops.nms import batched_nms, batched_nms_torch, nms, nms_torch

REFERENCE_TIMES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "REFERENCE_TIMES.md"


def clustered_boxes(n: int, seed: int = 0, height: int = 800, width: int = 1216) -> tuple[torch.Tensor, ...]:
    """(n, 4) x1y1x2y2 boxes jittered around 50 base boxes, and (n,) scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(50, 2, generator=g) * torch.tensor([width, height])
    sides = 4 + torch.rand(50, 2, generator=g) * 296
    base = torch.cat((centres - sides / 2, centres + sides / 2), dim=1)
    boxes = base[torch.randint(0, 50, (n,), generator=g)] + torch.randn(n, 4, generator=g) * 8
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return boxes, torch.rand(n, generator=g)


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def reference_ms() -> dict[str, float]:
    """torchvision's times by row label of REFERENCE_TIMES.md ({} when the shared folder is absent)."""
    if not REFERENCE_TIMES.is_file():
        return {}
    times = {}
    for line in REFERENCE_TIMES.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2:
            try:
                times[cells[0]] = float(cells[1])
            except ValueError:
                continue
    return times


def offset_trick(single: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
        offsets = idxs.to(boxes) * (boxes.max() + 1)
        return single(boxes + offsets[:, None], scores, threshold)

    return run


def per_category_loop(single: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
        kept = []
        for category in torch.unique(idxs):
            members = torch.where(idxs == category)[0]
            kept.append(members[single(boxes[members], scores[members], threshold)])
        kept = torch.cat(kept)
        return kept[torch.argsort(scores[kept], descending=True, stable=True)]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per row (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (REFERENCE_TIMES.md used 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = reference_ms()
    if not _extension.HAS_EXTENSION:
        print(f"instaseg._C not built ({_extension.EXTENSION_ERROR}): C++ rows are skipped\n")

    rows = []
    for n in (1000, 5000, 20000):
        boxes, scores = clustered_boxes(n)
        label = f"nms, {n} clustered boxes, IoU 0.5"
        variants = {"C++ kernel": nms} if _extension.HAS_EXTENSION else {}
        variants["pure PyTorch"] = nms_torch
        expected = nms_torch(boxes, scores, 0.5)
        for name, op in variants.items():
            exact = torch.equal(op(boxes, scores, 0.5), expected)
            ms = median_ms(lambda op=op, boxes=boxes, scores=scores: op(boxes, scores, 0.5), args.repeats)
            rows.append((label, name, len(expected), exact, ms, reference.get(label)))

    boxes, scores = clustered_boxes(5000, seed=1)
    idxs = torch.randint(0, 80, (5000,), generator=torch.Generator().manual_seed(2))
    label = "batched_nms, 5000 boxes, 80 classes, IoU 0.5"
    expected = per_category_loop(nms_torch)(boxes, scores, idxs, 0.5)
    strategies = {}
    if _extension.HAS_EXTENSION:
        strategies["kernel (batched_nms)"] = batched_nms
        strategies["offset + kernel"] = offset_trick(nms)
        strategies["loop + kernel"] = per_category_loop(nms)
    strategies["loop + torch (batched_nms_torch)"] = batched_nms_torch
    strategies["offset + torch"] = offset_trick(nms_torch)
    for name, op in strategies.items():
        exact = torch.equal(op(boxes, scores, idxs, 0.5), expected)
        ms = median_ms(lambda op=op: op(boxes, scores, idxs, 0.5), args.repeats)
        rows.append((label, name, len(expected), exact, ms, reference.get(label)))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} runs\n")
    print("| case | implementation | kept | exact | median ms | / torchvision |")
    print("|---|---|---|---|---|---|")
    for label, name, kept, exact, ms, ref in rows:
        ratio = f"{ms / ref:.2f}" if ref else "n/a"
        print(f"| {label} | {name} | {kept} | {'yes' if exact else 'NO'} | {ms:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
