"""Which samples each process trains on at each iteration, as a pure function of (seed, iteration, rank).

The run reads an endless stream of sample positions 0, 1, 2, ...; position `p` is image `permutation(epoch = p
// N)[p % N]`, each epoch's permutation drawn from a generator seeded with (seed, epoch). Iteration `i`
consumes positions `[i * B, (i + 1) * B)` for the global batch size `B`; process `r` of `R` takes the `B / R`
positions starting at `i * B + r * B / R` and splits them into micro-batches of `images_per_forward`.

Because nothing depends on how many processes or data-loader workers there are, or on what ran before, a run
resumed at iteration `i` reads exactly what an uninterrupted run would, and R processes together read what one
process reads.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def derive_seed(*values: int) -> int:
    """A 63-bit seed mixed from `values` (NumPy SeedSequence hashing: nearby inputs, unrelated seeds)."""
    return int(np.random.SeedSequence(list(values)).generate_state(2, np.uint64)[0] >> np.uint64(1))


class TrainingBatchSampler:
    """Yields this process's micro-batches, in order, from `start_iteration` on, forever.

    Each micro-batch is a list of `(image_index, position)` pairs: the dataset uses `position` to seed the
    sample's augmentation. Use it as a DataLoader's `batch_sampler`.
    """

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        images_per_forward: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_iteration: int = 0,
    ):
        if num_images < 1:
            raise ValueError("the training set has no images")
        if batch_size % world_size:
            raise ValueError(
                f"batch size {batch_size} must be divisible by the number of processes {world_size}"
            )
        per_process = batch_size // world_size
        if per_process % images_per_forward:
            raise ValueError(
                f"images per process and step ({per_process} = batch size {batch_size} / {world_size} "
                f"processes) must be divisible by images_per_forward {images_per_forward}"
            )
        self.num_images = num_images
        self.batch_size = batch_size
        self.per_process = per_process
        self.images_per_forward = images_per_forward
        self.seed = seed
        self.rank = rank
        self.start_iteration = start_iteration
        self._permutation_epoch = -1
        self._permutation: list[int] = []

    @property
    def micro_batches_per_step(self) -> int:
        return self.per_process // self.images_per_forward

    def image_at(self, position: int) -> int:
        """The image index at `position` of the sample stream."""
        epoch, offset = divmod(position, self.num_images)
        if epoch != self._permutation_epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._permutation = torch.randperm(self.num_images, generator=generator).tolist()
            self._permutation_epoch = epoch
        return self._permutation[offset]

    def positions(self, iteration: int) -> list[int]:
        """The stream positions this process reads at `iteration`."""
        first = iteration * self.batch_size + self.rank * self.per_process
        return list(range(first, first + self.per_process))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iteration
        while True:
            positions = self.positions(iteration)
            for start in range(0, self.per_process, self.images_per_forward):
                yield [(self.image_at(p), p) for p in positions[start : start + self.images_per_forward]]
            iteration += 1
