"""Dataset formats: readers into one record type (`records`), a COCO writer, conversion and splitting."""

from instaseg.data.coco import read_coco, write_coco
from instaseg.data.convert import (
    SOURCE_FORMATS,
    ConvertSummary,
    convert,
    format_convert_summary,
    read_dataset,
)
from instaseg.data.label_maps import read_label_maps
from instaseg.data.mask_folders import read_mask_folders
from instaseg.data.records import (
    AnnotationRecord,
    CategoryRecord,
    Dataset,
    DatasetError,
    ImageRecord,
    SkipReport,
    image_record_to_instances,
)
from instaseg.data.split import SplitSummary, format_split_summary, split, split_dataset
from instaseg.data.yolo import read_yolo

__all__ = [
    "SOURCE_FORMATS",
    "AnnotationRecord",
    "CategoryRecord",
    "ConvertSummary",
    "Dataset",
    "DatasetError",
    "ImageRecord",
    "SkipReport",
    "SplitSummary",
    "convert",
    "format_convert_summary",
    "format_split_summary",
    "image_record_to_instances",
    "read_coco",
    "read_dataset",
    "read_label_maps",
    "read_mask_folders",
    "read_yolo",
    "split",
    "split_dataset",
    "write_coco",
]
