"""The question record shared by all readers, and the registry of data sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

__all__ = ["QuestionRecord", "DATASETS", "SINGLE_ANSWER_DATASETS", "is_single_answer", "check_dataset_name"]

# Data set names accepted by ``read_dataset``.
DATASETS: tuple[str, ...] = ("vqa_v2", "gqa", "clevr", "easy_vqa", "sort_of_clevr")

# Data sets with one ground-truth answer per question. They use exact-match
# accuracy and a one-hot target, while VQA v2 uses the official soft accuracy.
SINGLE_ANSWER_DATASETS: frozenset[str] = frozenset({"gqa", "clevr", "easy_vqa", "sort_of_clevr"})


@dataclass
class QuestionRecord:
    """One question about one image.

    Attributes:
        question_id: The data set's question id (int for VQA v2, CLEVR,
            easy-VQA and Sort-of-CLEVR; str for GQA). Unique within a split.
        image_path: Path of the image file.
        question: The question text.
        answers: The raw ground-truth answers with repeats, in annotation
            order: 10 for VQA v2, 1 for single-answer data sets, none for test
            splits without public answers.
        answer_type: The data set's answer or question type (VQA v2
            ``answer_type``, GQA structural type, CLEVR final program step,
            Sort-of-CLEVR question family), or None.
    """

    question_id: Union[int, str]
    image_path: str
    question: str
    answers: list[str]
    answer_type: Optional[str] = None


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is a known data set, else raise ``ValueError`` listing the valid names."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names are: {', '.join(DATASETS)}")
    return name


def is_single_answer(name: str) -> bool:
    """Return whether data set ``name`` has one answer per question (exact-match metric, one-hot target).

    Args:
        name: One of ``DATASETS``.

    Raises:
        ValueError: If ``name`` is not a known data set.
    """
    return check_dataset_name(name) in SINGLE_ANSWER_DATASETS
