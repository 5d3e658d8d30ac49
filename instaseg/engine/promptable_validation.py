"""Validation of a promptable model during training: the training's own prompt simulation (first point or
box, then corrective clicks) on validation images without augmentation, scored as IoU on the model's low-res
grid. Cheap enough to run every `eval_period`; the full interactive protocol (clicks at the centre of the
largest error region, up to 20, on full-size masks) is `instaseg eval-prompts` (`evaluation.interactive`).
"""

from __future__ import annotations

import torch

from instaseg.data.records import Dataset
from instaseg.data.torch_dataset import CategoryMap, TrainingDataset
from instaseg.engine.distributed import DistributedContext
from instaseg.models.promptable import PromptableSam

# The metric that picks best.pt for this family: the mean IoU over all prompting rounds.
BEST_METRIC = "prompt_iou"
# Validation images scored each time (the first ones of the set): a few minutes on 2 cores at most.
MAX_IMAGES = 12


class PromptValidator:
    """Scores a `PromptableSam` on the first `max_images` images of `dataset`, on rank 0 only, with the
    prompts drawn from a generator seeded by `seed` (the same prompts at every evaluation)."""

    best_metric = BEST_METRIC

    def __init__(
        self,
        dataset: Dataset,
        categories: CategoryMap,
        seed: int,
        context: DistributedContext,
        max_images: int = MAX_IMAGES,
    ) -> None:
        self.data = TrainingDataset(dataset, categories)
        self.seed = seed
        self.context = context
        self.count = min(max_images, len(self.data))

    def predict(self, model: PromptableSam) -> list[torch.Tensor]:
        """Per image, the `(rounds, objects)` IoU; empty on ranks other than 0."""
        if not self.context.is_main:
            return []
        was_training = model.training
        model.eval()
        results = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for index in range(self.count):
                image, target = self.data[index]
                results.append(
                    model.prompt_ious([image.to(self.context.device)], [target.to(self.context.device)])
                )
        model.train(was_training)
        return results

    def score(self, results: list[torch.Tensor]) -> dict[str, float]:
        """`prompt_iou_round{r}`: mean IoU of all prompted objects after round r; `prompt_iou`: their mean."""
        ious = torch.cat(results, dim=1) if results else torch.zeros(1, 0)
        per_round = ious.mean(dim=1) if ious.shape[1] else torch.zeros(ious.shape[0])
        metrics = {f"prompt_iou_round{r}": float(value) for r, value in enumerate(per_round)}
        metrics[BEST_METRIC] = float(per_round.mean())
        metrics["prompt_objects"] = float(ious.shape[1])
        return metrics
