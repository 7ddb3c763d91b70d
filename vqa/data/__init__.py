"""Data sets, answer vocabulary, image loading and batching.

See ``data/README.md`` for the expected folder layouts and the splits.
"""

from vqa.data.dataset import ImageGroupedBatchSampler, VQACollator, VQADataset
from vqa.data.images import BAD_IMAGE_POLICIES, DEFAULT_BACKGROUND, ImageDecodeError, load_image, to_rgb
from vqa.data.readers import (
    read_clevr,
    read_dataset,
    read_easy_vqa,
    read_gqa,
    read_sort_of_clevr,
    read_vqa_v2,
)
from vqa.data.records import DATASETS, SINGLE_ANSWER_DATASETS, QuestionRecord, is_single_answer
from vqa.data.sort_of_clevr import question_group
from vqa.data.vocab import AnswerVocab

__all__ = [
    "AnswerVocab",
    "BAD_IMAGE_POLICIES",
    "DATASETS",
    "DEFAULT_BACKGROUND",
    "ImageDecodeError",
    "ImageGroupedBatchSampler",
    "QuestionRecord",
    "SINGLE_ANSWER_DATASETS",
    "VQACollator",
    "VQADataset",
    "is_single_answer",
    "load_image",
    "question_group",
    "read_clevr",
    "read_dataset",
    "read_easy_vqa",
    "read_gqa",
    "read_sort_of_clevr",
    "read_vqa_v2",
    "to_rgb",
]
