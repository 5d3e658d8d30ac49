"""The training loop: `train(config)` runs (or resumes) one run described by a `TrainConfig`.

One optimiser step at iteration `i`: every process reads its share of the global batch (see `sampler`), in
micro-batches of `images_per_forward`; before each micro-batch's forward pass, torch's generator is seeded
from (seed, i, global micro-batch index), so the model's random choices (RPN / RoI sampling, the model's
multi-scale `min_size`) depend on nothing else. Gradients are accumulated over the micro-batches and averaged
over the processes by DistributedDataParallel; the losses are averaged over processes for logging and for the
non-finite check. With that, a resumed run repeats an uninterrupted one bit for bit on the CPU, and R
processes with `batch_size B` train the same model as one process with the same `B` (up to float summation
order).

Only rank 0 writes files (config, checkpoints, metrics) and shows the progress bar. Under torchrun, an
exception in any process ends all of them.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from instaseg.data.torch_dataset import CategoryMap, TrainingDataset, collate
from instaseg.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_model_file,
)
from instaseg.engine.config import ConfigError, TrainConfig, save_config
from instaseg.engine.datasets import read_dataset
from instaseg.engine.distributed import (
    DistributedContext,
    all_reduce_mean,
    init_distributed,
    shutdown_distributed,
)
from instaseg.engine.ema import ModelEMA
from instaseg.engine.evaluator import Evaluator
from instaseg.engine.metrics_log import MetricsLog
from instaseg.engine.optim import build_optimizer
from instaseg.engine.promptable_validation import PromptValidator
from instaseg.engine.run_dir import prepare_run_dir
from instaseg.engine.sampler import TrainingBatchSampler, derive_seed
from instaseg.engine.schedule import WarmupSchedule
from instaseg.models.build import build, load_backbone_weights, model_file_for
from instaseg.models.condinst.build import (
    build_condinst,
    condinst_model_file,
    load_condinst_backbone_weights,
)
from instaseg.models.condinst.config import CondInstConfig
from instaseg.models.condinst.model import LOSS_KEYS as CONDINST_LOSS_KEYS
from instaseg.models.condinst.model import CondInst
from instaseg.models.config import MaskRCNNConfig
from instaseg.models.mask_rcnn import MaskRCNN
from instaseg.models.model_file import ModelFile
from instaseg.models.promptable import (
    PromptableConfig,
    PromptableSam,
    build_promptable,
    load_promptable_encoder_weights,
    promptable_model_file,
)
from instaseg.models.promptable import loss_keys as promptable_loss_keys

# The losses Mask R-CNN's training forward returns, in logging order (CondInst's: CONDINST_LOSS_KEYS).
LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")

# Config keys that may differ between a run and its resumption: they change neither the weights nor the data.
# `schedule.iterations` may grow to train longer (the learning-rate curve then follows the new length).
# `output_dir` is where last.pt was found, however it is spelt (`./runs/x`, an absolute path, a moved folder).
RESUMABLE_CHANGES = (
    "output_dir",
    "train.workers",
    "train.device",
    "train.log_period",
    "train.eval_period",
    "train.checkpoint_period",
    "schedule.iterations",
    "data.val",
)


class TrainingDivergedError(RuntimeError):
    """A loss or the gradient became NaN or infinite; the run stopped before applying that step."""


@dataclass
class TrainResult:
    """What a run ended with (on rank 0; other ranks see `best_score` and `last_eval` as None).

    `best_score` is the best validation value of `best_metric`, the validator's metric that picks `best.pt`
    (`segm_AP` for detectors, `prompt_iou` for promptable models; None without a validation set)."""

    run_dir: Path
    iteration: int
    best_metric: str | None
    best_score: float | None
    last_eval: dict[str, float] | None
    is_main: bool = True  # False on the other ranks of a torchrun job, which should stay quiet


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train (or with `resume`, continue) the run `config` describes; see the module docstring.

    `overwrite` replaces a run already in `config.output_dir`. `stop_at` ends this session after that many
    iterations in total (a checkpoint is written; resume later to finish). `progress` shows a tqdm bar
    (default: when stderr is a terminal). Under torchrun the process group is set up here and torn down at the
    end.
    """
    owns_group = not (dist.is_available() and dist.is_initialized())
    context = init_distributed(config.train.device)
    try:
        trainer = Trainer(config, context, resume=resume, overwrite=overwrite)
        return trainer.run(stop_at=stop_at, progress=sys.stderr.isatty() if progress is None else progress)
    finally:
        if owns_group:
            shutdown_distributed()


class Trainer:
    """Holds the run's model, optimiser, schedule, EMA and data; `run()` trains. Use `train()` unless you need
    the pieces (e.g. to inspect the model after a few steps)."""

    def __init__(
        self,
        config: TrainConfig,
        context: DistributedContext,
        *,
        resume: bool = False,
        overwrite: bool = False,
    ):
        self.config = config
        self.context = context
        loop = config.train
        # The precision the run really uses (recorded in its model files): bf16 only where it is native.
        self.bf16 = loop.bf16 and bf16_is_native(context.device)
        if loop.bf16 and not self.bf16 and context.is_main:
            print(
                "train.bf16 is on, but oneDNN reports no bfloat16 support on this CPU (AVX2 only): there "
                "bf16 is emulated, 20x slower than float32 for a matrix product; this run trains in float32",
                file=sys.stderr,
            )
        self.files = prepare_run_dir(config.output_dir, resume, overwrite) if context.is_main else None
        train_set = read_dataset(config.data.train, "train", report=context.is_main)
        # Things first, then stuff (categories with `isthing: 0`): model classes 1..T are the detector's,
        # T+1..T+S the semantic head's (Panoptic FPN).
        things = [c for c in train_set.categories if c.extra.get("isthing", 1)]
        stuff = [c for c in train_set.categories if not c.extra.get("isthing", 1)]
        self.categories = CategoryMap([category.id for category in things + stuff])
        self.category_records = [{"id": c.id, "name": c.name} for c in things + stuff]
        self.model_config = config.model.model_config(
            num_classes=len(things) + 1, num_stuff_classes=len(stuff)
        )
        if self.model_config.num_classes != len(things) + 1:
            raise ConfigError(
                f"config key 'model.settings.num_classes' is {self.model_config.num_classes} but the "
                f"training set has {len(things)} thing categories (num_classes counts the background: "
                f"expected {len(things) + 1})"
            )
        torch.manual_seed(derive_seed(loop.seed))  # the initial weights follow the seed like every other draw
        self.model = build_for(self.model_config, config.model.weights)
        self.loss_keys = loss_keys_for(self.model_config)
        self.model.categories = self.category_records
        if config.model.backbone_weights is not None:
            load_backbone_weights_for(self.model, config.model.backbone_weights)
        self.model = self.model.to(context.device).train()
        self.ema = ModelEMA(self.model, loop.ema_decay) if loop.ema_decay is not None else None
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = WarmupSchedule(self.optimizer, config.schedule)
        self.iteration = 0
        self.best: float | None = None
        if resume:
            self._load(Path(config.output_dir) / "last.pt")

        images_per_forward = loop.images_per_forward or loop.batch_size // context.world_size
        self.sampler = TrainingBatchSampler(
            len(train_set.images),
            loop.batch_size,
            images_per_forward,
            loop.seed,
            context.rank,
            context.world_size,
            start_iteration=self.iteration,
        )
        self.train_data = TrainingDataset(train_set, self.categories, config.augment, seed=loop.seed)
        self.evaluator = self._evaluator() if config.data.val is not None else None
        self.ddp_model: torch.nn.Module = self.model
        if context.is_distributed:
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids)
        self.last_eval: dict[str, float] | None = None
        # Files are written only once everything above worked: a failed start leaves no half run behind.
        self.metrics = None
        if self.files is not None:
            if overwrite:
                self.files.remove_run()
            save_config(config, self.files.config)
            self.metrics = MetricsLog(self.files.metrics)
            self.metrics.truncate_after(self.iteration)

    def run(self, stop_at: int | None = None, progress: bool = False) -> TrainResult:
        """Train to `schedule.iterations` (or `stop_at`), evaluating, logging and checkpointing on the way."""
        loop = self.config.train
        end = self.config.schedule.iterations
        stop = end if stop_at is None else min(stop_at, end)
        batches = self._batches()
        bar = tqdm(
            total=end,
            initial=self.iteration,
            disable=not (progress and self.context.is_main),
            unit="it",
            dynamic_ncols=True,
        )
        window: list[torch.Tensor] = []
        window_time = 0.0
        try:
            while self.iteration < stop:
                started = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                losses, grad_norm = self._step(batches)
                window_time += time.perf_counter() - started
                window.append(losses)
                self.iteration += 1
                images_per_s = len(window) * loop.batch_size / window_time
                bar.update(1)
                bar.set_postfix(loss=f"{float(losses.sum()):.3f}", img_s=f"{images_per_s:.2f}")
                at_end = self.iteration == stop
                if at_end or (loop.log_period and self.iteration % loop.log_period == 0):
                    self._log_train(torch.stack(window).mean(dim=0), lr, grad_norm, images_per_s)
                    window, window_time = [], 0.0
                if self.evaluator is not None and (
                    self.iteration == end or (loop.eval_period and self.iteration % loop.eval_period == 0)
                ):
                    self._evaluate()
                if at_end or (loop.checkpoint_period and self.iteration % loop.checkpoint_period == 0):
                    self._save_last()
        finally:
            bar.close()
        return TrainResult(
            Path(self.config.output_dir),
            self.iteration,
            None if self.evaluator is None else self.evaluator.best_metric,
            self.best,
            self.last_eval,
            self.context.is_main,
        )

    def _batches(self) -> Iterator[tuple[list[torch.Tensor], list]]:
        workers = self.config.train.workers
        loader = torch.utils.data.DataLoader(
            self.train_data,
            batch_sampler=self.sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=self.context.device.type == "cuda",
            persistent_workers=workers > 0,
        )
        return iter(loader)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.context.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _step(self, batches: Iterator) -> tuple[torch.Tensor, float]:
        """One optimiser step; returns the process-averaged losses (`self.loss_keys` order) and grad norm."""
        device = self.context.device
        accumulate = self.sampler.micro_batches_per_step
        sums = torch.zeros(len(self.loss_keys), device=device)
        for micro in range(accumulate):
            images, targets = next(batches)
            images = [image.to(device, non_blocking=True) for image in images]
            targets = [target.to(device) for target in targets]
            torch.manual_seed(
                derive_seed(self.config.train.seed, self.iteration, self.context.rank * accumulate + micro)
            )
            last = micro == accumulate - 1
            no_sync = (
                self.ddp_model.no_sync()
                if self.context.is_distributed and not last
                else contextlib.nullcontext()
            )
            with no_sync:
                with self._autocast():
                    loss_dict = self.ddp_model(images, targets)
                losses = torch.stack([loss_dict[key].float() for key in self.loss_keys])
                (losses.sum() / accumulate).backward()
            sums += losses.detach() / accumulate
        averaged = all_reduce_mean(sums, self.context).cpu()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.config.optim.grad_clip_norm or math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
        if not bool(torch.isfinite(averaged).all()) or not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(self._divergence_message(averaged, grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return averaged, grad_norm

    def _divergence_message(self, losses: torch.Tensor, grad_norm: float) -> str:
        values = ", ".join(
            f"{key}={value:.4g}" for key, value in zip(self.loss_keys, losses.tolist(), strict=True)
        )
        last = Path(self.config.output_dir) / "last.pt"
        kept = f"the last checkpoint {last} is intact" if last.exists() else "no checkpoint was written yet"
        return (
            f"training diverged at iteration {self.iteration + 1}: non-finite loss or gradient ({values}, "
            f"grad_norm={grad_norm:.4g}); the step was not applied and {kept}. Try a lower optim.lr, "
            "a longer schedule.warmup_iterations or optim.grad_clip_norm"
        )

    def _log_train(self, losses: torch.Tensor, lr: float, grad_norm: float, images_per_s: float) -> None:
        """Append a train record: losses averaged over the log window; lr and grad norm of its last step."""
        if self.metrics is None:
            return
        record: dict[str, Any] = {"kind": "train", "iteration": self.iteration, "time": time.time(), "lr": lr}
        record["loss"] = float(losses.sum())
        record.update({key: float(value) for key, value in zip(self.loss_keys, losses.tolist(), strict=True)})
        record["grad_norm"] = grad_norm
        record["images_per_s"] = images_per_s
        self.metrics.append(record)

    def _evaluate(self) -> None:
        """Predict on every process; rank 0 scores, logs, and keeps `best.pt` by the validator's
        `best_metric`."""
        evaluated = self.ema.module if self.ema is not None else self.model
        results = self.evaluator.predict(evaluated)
        if not self.context.is_main:
            return
        metrics = self.evaluator.score(results)
        self.last_eval = metrics
        score = metrics[self.evaluator.best_metric]
        improved = self.best is None or score > self.best
        if improved:
            self.best = score
            save_model_file(self.files.best, model_file_of(evaluated, self._provenance(metrics)))
        self.metrics.append(
            {"kind": "eval", "iteration": self.iteration, "time": time.time(), **metrics, "best": improved}
        )

    def _save_last(self) -> None:
        if self.files is None:
            return
        save_checkpoint(
            self.files.last,
            model_file_of(self.model, self._provenance(self.last_eval)),
            {
                "train_config": self.config.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "iteration": self.iteration,
                "rng": capture_rng_state(),
                "best": self.best,
            },
        )

    def _provenance(self, metrics: dict[str, float] | None) -> dict[str, Any]:
        """Where the weights come from: data, recipe, iteration and validation metrics (model files)."""
        return {
            "data": {
                "train": self.config.data.train.path,
                "val": self.config.data.val.path if self.config.data.val else None,
            },
            "recipe": self.config.to_dict(),
            "precision": "bf16 autocast" if self.bf16 else "float32",
            "iteration": self.iteration,
            "metrics": metrics,
        }

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path)
        _check_resumable(state["train_config"], self.config.to_dict(), path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The saved lr is the saved schedule's; a run resumed with more iterations follows the new curve.
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr(), strict=True):
            group["lr"] = lr
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.iteration = int(state["iteration"])
        self.best = state["best"]
        restore_rng_state(state["rng"])

    def _evaluator(self) -> Evaluator | PromptValidator:
        val_set = read_dataset(self.config.data.val, "val", report=self.context.is_main)
        val_ids = sorted(c.id for c in val_set.categories)
        if val_ids != sorted(self.categories.category_ids):
            raise ValueError(
                f"the validation set's category ids {val_ids} differ from the training set's "
                f"{sorted(self.categories.category_ids)}"
            )
        if isinstance(self.model, PromptableSam):
            return PromptValidator(val_set, self.categories, self.config.train.seed, self.context)
        ground_truth_path = Path(self.config.output_dir) / "val_ground_truth.json"
        return Evaluator(
            val_set, self.categories, ground_truth_path, self.config.train.eval_max_detections, self.context
        )


def bf16_is_native(device: torch.device) -> bool:
    """Whether bfloat16 autocast pays here: any CUDA device, or a CPU that oneDNN reports bfloat16 support for
    (AVX-512 and newer). On an AVX2-only CPU it is emulated: a 512x512 matrix product took 186 ms against
    9 ms in float32 (one thread, 2026-12-03)."""
    return device.type == "cuda" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def build_for(
    model_config: MaskRCNNConfig | CondInstConfig | PromptableConfig, weights: str | None
) -> torch.nn.Module:
    """The model `model_config` describes (its family's constructor), with initial `weights` if given."""
    if isinstance(model_config, PromptableConfig):
        return build_promptable(model_config, weights=weights)
    if isinstance(model_config, CondInstConfig):
        return build_condinst(model_config, weights=weights)
    return build(model_config, weights=weights)


def loss_keys_for(model_config: MaskRCNNConfig | CondInstConfig | PromptableConfig) -> tuple[str, ...]:
    """The loss names the family's training forward returns, in logging order."""
    if isinstance(model_config, PromptableConfig):
        return promptable_loss_keys(model_config)
    if isinstance(model_config, CondInstConfig):
        return CONDINST_LOSS_KEYS
    return LOSS_KEYS + (("loss_sem_seg",) if model_config.num_stuff_classes else ())


def load_backbone_weights_for(model: torch.nn.Module, source: str) -> None:
    """Start the model's backbone body from ImageNet weights (`model.backbone_weights`); a promptable model's
    encoder from a trained Mask R-CNN's EfficientNet-Lite0 FPN."""
    if isinstance(model, PromptableSam):
        load_promptable_encoder_weights(model, source)
    elif isinstance(model, CondInst):
        load_condinst_backbone_weights(model, source)
    else:
        load_backbone_weights(model, source)


def model_file_of(model: torch.nn.Module, provenance: dict[str, Any]) -> ModelFile:
    """The `ModelFile` of a model the trainer built (best.pt, last.pt)."""
    if isinstance(model, PromptableSam):
        return promptable_model_file(model, provenance)
    if isinstance(model, CondInst):
        return condinst_model_file(model, provenance)
    if isinstance(model, MaskRCNN):
        return model_file_for(model, provenance)
    raise TypeError(f"no model file for a {type(model).__name__}")


def _check_resumable(saved: dict, current: dict, path: Path) -> None:
    """Refuse to resume with a config that would change the weights or the data of the run."""
    saved_flat, current_flat = _flatten(saved), _flatten(current)
    changed = sorted(
        key
        for key in saved_flat.keys() | current_flat.keys()
        if saved_flat.get(key) != current_flat.get(key)
        and not any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_CHANGES)
    )
    if changed:
        details = "; ".join(
            f"{key}: {saved_flat.get(key)!r} -> {current_flat.get(key)!r}" for key in changed[:5]
        )
        raise ConfigError(
            f"cannot resume from {path}: the config differs from the run's in {', '.join(changed)} "
            f"({details}). Only {', '.join(RESUMABLE_CHANGES)} may change when resuming"
        )


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
        return flat
    return {prefix: data}
