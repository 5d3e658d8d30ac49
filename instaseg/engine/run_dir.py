"""The run folder: what a training run writes, and the rules for starting, resuming or overwriting one.

config.yaml             the resolved training config (every default filled in)
last.pt                 the latest training checkpoint (what `--resume` continues from)
best.pt                 the weights with the best validation score so far: mask AP, or prompt IoU for
                        promptable models (`instaseg.models.load_model` loads it)
metrics.jsonl           training and evaluation records, one JSON object per line
val_ground_truth.json   the validation set as COCO JSON (what evaluation compares against)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class RunExistsError(ValueError):
    """The output folder already holds a run and neither resume nor overwrite was asked for."""


@dataclass(frozen=True)
class RunFiles:
    """Paths of one run's files inside `root`."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def val_ground_truth(self) -> Path:
        return self.root / "val_ground_truth.json"

    def all(self) -> tuple[Path, ...]:
        return (self.config, self.last, self.best, self.metrics, self.val_ground_truth)

    def remove_run(self) -> None:
        """Delete the run's files (only those: other files in the folder stay)."""
        for path in self.all():
            path.unlink(missing_ok=True)


def prepare_run_dir(root: str | Path, resume: bool, overwrite: bool) -> RunFiles:
    """Check the folder against the resume / overwrite choice and create it; returns its file paths.

    - a new or empty folder (or one with no run file in it): created, ready for a fresh run;
    - a folder holding a run: refused unless `resume` (needs `last.pt`) or `overwrite`. Nothing is deleted
      here: the caller removes the old run (`RunFiles.remove_run`) once the new one has started, so that a
      start that fails (a wrong dataset path) leaves the old run as it was.
    """
    if resume and overwrite:
        raise ValueError("choose either resume or overwrite, not both")
    files = RunFiles(Path(root))
    if files.root.exists() and not files.root.is_dir():
        raise ValueError(f"output_dir {files.root} exists and is not a folder")
    existing = [path for path in files.all() if path.exists()]
    if resume:
        if not files.last.is_file():
            raise FileNotFoundError(
                f"cannot resume: {files.last} does not exist (no checkpoint of a run there)"
            )
        return files
    if existing and not overwrite:
        names = ", ".join(path.name for path in existing)
        raise RunExistsError(
            f"output_dir {files.root} already holds a run ({names}); pass --resume to continue it or "
            "--overwrite to start again (or choose another output_dir)"
        )
    files.root.mkdir(parents=True, exist_ok=True)
    return files
