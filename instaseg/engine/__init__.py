"""Training: `trainer.train(config)` with the pieces in their own modules.

`config` (the YAML schema), `optim` (SGD / AdamW, weight-decay groups), `schedule` (warm-up + multi-step /
cosine), `ema`, `checkpoint` (atomic save, RNG state), `sampler` (the seeded sample stream), `distributed`
(torchrun / DDP plumbing), `evaluator` (validation COCO AP), `metrics_log` (JSONL), `plot` (curves),
`run_dir`. Nothing is imported here: importing one engine module does not pull in the others.
"""
