"""Image-major batching: each item is one image with all of its questions.

Data sets such as VQA v2 (about 5 questions per image) and easy-VQA (about 10)
ask several questions about one image. Sampling images instead of questions
decodes, transforms and encodes each image once per epoch, and the collator
still sees one entry per question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from vqa.data.dataset import VQACollator, VQADataset

__all__ = ["ImageGroupedDataset", "GroupedCollator"]


class ImageGroupedDataset(Dataset):
    """Wrap a ``VQADataset`` so that item i is the list of items of the i-th distinct image.

    Questions keep the order of the wrapped records; images are ordered by first appearance.
    The image is loaded once per item and shared by its questions.
    """

    def __init__(self, dataset: VQADataset):
        self.dataset = dataset
        groups: dict[str, list[int]] = {}
        for index, record in enumerate(dataset.records):
            groups.setdefault(record.image_path, []).append(index)
        self.groups = list(groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def num_questions(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        indices = self.groups[index]
        first = self.dataset[indices[0]]
        if first["skipped"]:
            records = [self.dataset.records[i] for i in indices]
            return [{"skipped": True, "image_path": r.image_path, "question_id": r.question_id} for r in records]

        items = [first]
        for i in indices[1:]:
            record = self.dataset.records[i]
            items.append(
                {
                    **first,
                    "question_id": record.question_id,
                    "question": record.question,
                    "target": self.dataset.vocab.soft_targets(record.answers),
                    "answers": list(record.answers),
                    "answer_type": record.answer_type,
                }
            )
        return items


class GroupedCollator:
    """Flatten a batch of ``ImageGroupedDataset`` items and collate it with ``VQACollator``."""

    def __init__(self, collator: VQACollator):
        self.collator = collator

    def __call__(self, groups: Sequence[list[dict[str, Any]]]) -> dict[str, Any]:
        return self.collator([item for group in groups for item in group])
