"""`Instances`: the detected or annotated objects of one image, and their COCO dict forms."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from instaseg.structures.boxes import box_area, xywh_to_xyxy, xyxy_to_xywh
from instaseg.structures.coco_fields import area_problem, bbox_problem, is_int, iscrowd_problem
from instaseg.structures.masks import Index, Masks, check_image_size, normalize_index

__all__ = ["Instances"]


class Instances:
    """N objects of one image: boxes, labels, optional scores and masks, and any extra per-instance tensors.

    - `image_size`: (H, W) of the original image.
    - `boxes`: (N, 4) float x1y1x2y2 in original-image pixels (integer input is converted to float32).
    - `labels`: (N,) int64 category ids (COCO `category_id` at the edges).
    - `scores`: (N,) float, or None for ground truth.
    - `masks`: `Masks` of the same image size, or None.
    - `fields`: extra tensors whose first dimension is N (e.g. `iscrowd`, `mask_logits` (N, 28, 28)); they are
      indexed, concatenated and moved along with the rest.

    The constructor validates shapes, lengths and finiteness; build a changed copy with `replace(...)` so the
    checks run again rather than assigning attributes.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        boxes: torch.Tensor,
        labels: torch.Tensor,
        scores: torch.Tensor | None = None,
        masks: Masks | None = None,
        **fields: torch.Tensor,
    ) -> None:
        self.image_size = check_image_size(image_size, "Instances")
        self.boxes = _check_boxes(boxes)
        count = self.boxes.shape[0]
        self.labels = _check_vector(labels, "labels", count)
        if self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
            raise ValueError(f"Instances: labels must be integers, got {self.labels.dtype}")
        self.labels = self.labels.to(torch.int64)
        self.scores = None
        if scores is not None:
            self.scores = _check_vector(scores, "scores", count)
            if not self.scores.dtype.is_floating_point:
                raise ValueError(f"Instances: scores must be floating point, got {self.scores.dtype}")
        if masks is not None:
            if not isinstance(masks, Masks):
                raise TypeError(
                    f"Instances: masks must be a Masks (see Masks.from_bitmaps), got {type(masks)}"
                )
            if len(masks) != count:
                raise ValueError(f"Instances: {len(masks)} masks for {count} boxes")
            if masks.image_size != self.image_size:
                raise ValueError(f"Instances: masks are {masks.image_size}, image_size is {self.image_size}")
        self.masks = masks
        self.fields: dict[str, torch.Tensor] = {}
        for name, value in fields.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"Instances: field {name!r} must be a tensor, got {type(value).__name__}")
            if value.ndim == 0 or value.shape[0] != count:
                raise ValueError(
                    f"Instances: field {name!r} has shape {tuple(value.shape)}, first dimension not {count}"
                )
            self.fields[name] = value

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    def replace(self, **changes: object) -> Instances:
        """A validated copy with some attributes replaced (`boxes=`, `scores=`, `masks=`, or a field name)."""
        arguments: dict[str, object] = {
            "image_size": self.image_size,
            "boxes": self.boxes,
            "labels": self.labels,
            "scores": self.scores,
            "masks": self.masks,
            **self.fields,
        }
        arguments.update(changes)
        return Instances(**arguments)

    def __getitem__(self, index: Index) -> Instances:
        """Select instances by int (keeps a length-1 Instances), slice, bool mask or positions."""
        positions = normalize_index(index, len(self))

        def take(tensor: torch.Tensor) -> torch.Tensor:
            return tensor[positions.to(tensor.device)]

        return Instances(
            self.image_size,
            take(self.boxes),
            take(self.labels),
            None if self.scores is None else take(self.scores),
            None if self.masks is None else self.masks[positions],
            **{name: take(value) for name, value in self.fields.items()},
        )

    @staticmethod
    def cat(instances_list: Sequence[Instances]) -> Instances:
        """Concatenate Instances of the same image that carry the same attributes and fields."""
        if not instances_list:
            raise ValueError("Instances.cat needs at least one Instances")
        first = instances_list[0]
        for i, item in enumerate(instances_list):
            if not isinstance(item, Instances):
                raise TypeError(f"Instances.cat: element {i} is a {type(item).__name__}, not Instances")
            if item.image_size != first.image_size:
                raise ValueError(
                    f"Instances.cat: element {i} has image size {item.image_size}, not {first.image_size}"
                )
            if (item.scores is None) != (first.scores is None) or (item.masks is None) != (
                first.masks is None
            ):
                raise ValueError(
                    f"Instances.cat: element {i} differs from element 0 in having scores / masks"
                )
            if item.fields.keys() != first.fields.keys():
                names, expected = sorted(item.fields), sorted(first.fields)
                raise ValueError(f"Instances.cat: element {i} has fields {names}, element 0 has {expected}")

        def cat_tensors(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([tensor.to(first.device) for tensor in tensors])

        return Instances(
            first.image_size,
            cat_tensors([item.boxes for item in instances_list]),
            cat_tensors([item.labels for item in instances_list]),
            None if first.scores is None else cat_tensors([item.scores for item in instances_list]),
            None if first.masks is None else Masks.cat([item.masks for item in instances_list]),
            **{name: cat_tensors([item.fields[name] for item in instances_list]) for name in first.fields},
        )

    def to(self, device: torch.device | str) -> Instances:
        """The same instances with every tensor (and the masks) on `device`."""
        return Instances(
            self.image_size,
            self.boxes.to(device),
            self.labels.to(device),
            None if self.scores is None else self.scores.to(device),
            None if self.masks is None else self.masks.to(device),
            **{name: value.to(device) for name, value in self.fields.items()},
        )

    def to_coco_results(self, image_id: int) -> list[dict]:
        """COCO result dicts `{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation"}`.

        `segmentation` (compressed RLE, str counts) is present only when the instances have masks.
        """
        if self.scores is None:
            raise ValueError("Instances.to_coco_results needs scores (these instances have none)")
        bboxes = xyxy_to_xywh(self.boxes.detach().float()).cpu().tolist()
        labels = self.labels.cpu().tolist()
        scores = self.scores.detach().float().cpu().tolist()
        rles = self.masks.rles() if self.masks is not None else None
        results = []
        for i in range(len(self)):
            result = {"image_id": image_id, "category_id": labels[i], "bbox": bboxes[i], "score": scores[i]}
            if rles is not None:
                result["segmentation"] = rles[i]
            results.append(result)
        return results

    def to_coco_annotations(self, image_id: int, first_annotation_id: int) -> list[dict]:
        """COCO annotation dicts: `id, image_id, category_id, bbox [x, y, w, h], area, iscrowd, segmentation`.

        Ids count up from `first_annotation_id`. `area` comes from the `area` field when present (as
        `from_coco` keeps it), else the mask's pixel count, else the box area. `iscrowd` comes from the
        `iscrowd` field (default 0). `segmentation` is polygons when the masks are stored as polygons,
        compressed RLE otherwise, and absent without masks.
        """
        count = len(self)
        bboxes = xyxy_to_xywh(self.boxes.detach().float()).cpu().tolist()
        labels = self.labels.cpu().tolist()
        if "area" in self.fields:
            areas = self.fields["area"].detach().cpu().tolist()
        elif self.masks is not None:
            areas = self.masks.area().cpu().tolist()
        else:
            areas = box_area(self.boxes.detach().float()).cpu().tolist()
        crowd = self.fields["iscrowd"].cpu().tolist() if "iscrowd" in self.fields else [0] * count
        segmentations = None
        if self.masks is not None:
            polygon_form = self.masks.form == Masks.POLYGONS
            segmentations = self.masks.polygons() if polygon_form else self.masks.rles()
        annotations = []
        for i in range(count):
            annotation = {
                "id": first_annotation_id + i,
                "image_id": image_id,
                "category_id": labels[i],
                "bbox": bboxes[i],
                "area": areas[i],
                "iscrowd": int(crowd[i]),
            }
            if segmentations is not None:
                annotation["segmentation"] = segmentations[i]
            annotations.append(annotation)
        return annotations

    @staticmethod
    def from_coco(annotations: Sequence[dict], image_size: tuple[int, int]) -> Instances:
        """Instances from the COCO annotation dicts of one image of (H, W) `image_size`.

        Keeps `iscrowd` (int64) and `area` (float64, the value as given) as fields. Masks are polygons when
        every annotation has polygon segmentation, RLE when any has RLE (polygons are then rasterised); either
        all annotations carry `segmentation` or none do. Errors name the offending annotation's id.
        """
        image_size = check_image_size(image_size, "Instances")
        bboxes, labels, crowd, areas, segmentations = [], [], [], [], []
        for i, annotation in enumerate(annotations):
            if not isinstance(annotation, dict):
                raise ValueError(f"annotation #{i}: expected a dict, got {type(annotation).__name__}")
            where = f"annotation {annotation.get('id', f'#{i}')}"
            bbox, category_id, iscrowd, area = _coco_fields(annotation, where)
            bboxes.append(bbox)
            labels.append(category_id)
            crowd.append(iscrowd)
            areas.append(area)
            segmentations.append(annotation.get("segmentation"))
        count = len(bboxes)
        masks = _coco_masks(segmentations, annotations, image_size)
        boxes = torch.tensor(bboxes, dtype=torch.float32).reshape(count, 4)
        return Instances(
            image_size,
            xywh_to_xyxy(boxes),
            torch.tensor(labels, dtype=torch.int64),
            masks=masks,
            iscrowd=torch.tensor(crowd, dtype=torch.int64),
            area=torch.tensor(areas, dtype=torch.float64),
        )

    def __repr__(self) -> str:
        extras = ", ".join(sorted(self.fields))
        return (
            f"Instances(num={len(self)}, image_size={self.image_size}, scores={self.scores is not None}, "
            f"masks={self.masks is not None}, fields=[{extras}], device={self.device})"
        )


def _check_boxes(boxes: torch.Tensor) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"Instances: boxes must be a tensor (N, 4), got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"Instances: boxes must have shape (N, 4) x1y1x2y2, got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        boxes = boxes.to(torch.float32)
    if not torch.isfinite(boxes).all():
        bad = torch.nonzero(~torch.isfinite(boxes).all(dim=1)).reshape(-1).tolist()
        raise ValueError(f"Instances: boxes at rows {bad[:10]} are NaN or infinite")
    return boxes


def _check_vector(values: torch.Tensor, name: str, count: int) -> torch.Tensor:
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"Instances: {name} must be a tensor ({count},), got {type(values).__name__}")
    if values.shape != (count,):
        raise ValueError(
            f"Instances: {name} has shape {tuple(values.shape)}, expected ({count},) for {count} boxes"
        )
    return values


def _coco_fields(annotation: dict, where: str) -> tuple[list[float], int, int, float]:
    """bbox, category_id, iscrowd and area of one COCO annotation dict, checked by the COCO field rules."""
    bbox = annotation.get("bbox")
    category_id = annotation.get("category_id")
    iscrowd = annotation.get("iscrowd", 0)
    problem = bbox_problem(bbox)
    if problem is None and not is_int(category_id):
        problem = f"'category_id' must be an integer, got {category_id!r}"
    problem = problem or iscrowd_problem(iscrowd)
    if problem is None and "area" in annotation:
        problem = area_problem(annotation["area"])
    if problem is not None:
        raise ValueError(f"{where}: {problem}")
    values = [float(v) for v in bbox]
    area = float(annotation["area"]) if "area" in annotation else values[2] * values[3]
    return values, category_id, iscrowd, area


def _coco_masks(
    segmentations: list, annotations: Sequence[dict], image_size: tuple[int, int]
) -> Masks | None:
    present = [segmentation is not None for segmentation in segmentations]
    if not any(present):
        return None
    per_annotation = []
    for annotation, segmentation in zip(annotations, segmentations, strict=True):
        where = f"annotation {annotation.get('id', '?')}"
        if segmentation is None:
            raise ValueError(f"{where}: no 'segmentation' while other annotations of the image have one")
        try:
            if isinstance(segmentation, list):
                per_annotation.append(Masks.from_polygons([segmentation], image_size))
            elif isinstance(segmentation, dict):
                per_annotation.append(Masks.from_rles([segmentation], image_size))
            else:
                raise ValueError(f"must be a polygon list or an RLE dict, got {type(segmentation).__name__}")
        except ValueError as exc:
            raise ValueError(f"{where}: 'segmentation': {exc}") from exc
    return Masks.cat(per_annotation)  # stays polygons if all are polygons, else becomes RLE
