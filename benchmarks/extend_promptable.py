"""Add the refiner to a trained promptable model file: the same encoder and decoder weights, the config's
`refine_masks` set, and the refiner's mask head taken from the Mask R-CNN model file its encoder came from,
its click maps at zero (issue 17; step 2 of configs/nuclei_promptable_refiner.yaml, whose training starts
from this file; docs/models.md).

    .venv/bin/python benchmarks/make_refined_promptable.py --model runs/nuclei_promptable/coarse.pt \
        --detector instaseg/assets/models/nuclei_efficientnet_lite0.pt \
        --out runs/nuclei_promptable/refiner_start.pt

The output keeps `--model`'s float16 weights (when it has them) and adds the refiner's in float16.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from instaseg.models.model_file import ModelFile, WeightsError
from instaseg.models.promptable import (
    build_promptable,
    load_promptable_refiner_weights,
    promptable_model_file,
    resolve_promptable_config,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="promptable model file without a refiner")
    parser.add_argument("--detector", type=Path, required=True, help="Mask R-CNN model file of its encoder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    source = ModelFile.read(args.model)
    config = resolve_promptable_config(source.config)
    if config.refine_masks:
        raise SystemExit(f"{args.model}: already has a refiner (refine_masks true)")
    model = build_promptable(dataclasses.replace(config, refine_masks=True))
    missing, unexpected = model.load_state_dict(source.state_dict, strict=False)
    if unexpected or any(not key.startswith("refiner.") for key in missing):
        raise WeightsError(f"{args.model}: does not fit: missing {missing}, unexpected {unexpected}")
    load_promptable_refiner_weights(model, args.detector)
    model.categories, model.operating_point = source.categories, source.operating_point
    provenance = {**source.provenance, "refiner": {"mask_head_from": str(args.detector), "trained": False}}
    written = promptable_model_file(model, provenance)
    if source.provenance.get("weights") == "float16":
        written = written.half_precision()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written.save(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
