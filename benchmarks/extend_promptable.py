"""Add a stage to a trained promptable model file: the same weights, the config switched on for the new
part, which starts as built or from another model file (issue 17; docs/models.md, "Promptable model").

`--add refiner`: the refiner, its mask head taken from the Mask R-CNN model file its encoder came from
(`--detector`), its click maps at zero; step 2 of configs/nuclei_promptable_refiner.yaml, whose training
starts from the output:

    .venv/bin/python benchmarks/extend_promptable.py --add refiner --model runs/nuclei_promptable/coarse.pt \
        --detector instaseg/assets/models/nuclei_efficientnet_lite0.pt \
        --out runs/nuclei_promptable/refiner_start.pt

`--add click_box`: the click-box head (`models/promptable/click_box.py`), at its initialisation; step 5 of
configs/nuclei_promptable_click_box.yaml:

    .venv/bin/python benchmarks/extend_promptable.py --add click_box \
        --model instaseg/assets/models/nuclei_promptable_efficientnet_lite0.pt \
        --out runs/nuclei_promptable/click_box_start.pt

The output keeps `--model`'s float16 weights (when it has them) and adds the new part's in float16.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from instaseg.models.promptable import (
    extend_promptable,
    load_promptable_refiner_weights,
    promptable_model_file,
)

# The config switch of each part that can be added.
SWITCHES = {"refiner": "refine_masks", "click_box": "click_box"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--add", choices=sorted(SWITCHES), required=True, help="the part to add")
    parser.add_argument("--model", type=Path, required=True, help="promptable model file without it")
    parser.add_argument("--detector", type=Path, help="Mask R-CNN model file of its encoder (refiner)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.add == "refiner" and args.detector is None:
        parser.error("--add refiner needs --detector (the Mask R-CNN model file its mask head comes from)")
    switch = SWITCHES[args.add]
    model, source = extend_promptable(args.model, (args.add,), **{switch: True})
    if source.config.get(switch):
        raise SystemExit(f"{args.model}: already has a {args.add} ({switch} true)")
    added: dict = {"trained": False}
    if args.add == "refiner":
        load_promptable_refiner_weights(model, args.detector)
        added["mask_head_from"] = str(args.detector)
    written = promptable_model_file(model, {**source.provenance, args.add: added})
    if source.provenance.get("weights") == "float16":
        written = written.half_precision()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written.save(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
