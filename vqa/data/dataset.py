"""Torch dataset, collator and image-grouped batch sampler.

Bad images and ``num_workers > 0``: a counter kept in the dataset object only
counts what the main process loaded, because each worker process has its own
copy. So ``VQADataset.__getitem__`` returns a skip marker for an image that
fails under ``on_bad_image="skip"``, and ``VQACollator`` drops the marker and
lists the image path in ``batch["skipped"]``. The trainer sums those lists;
that count is correct for any number of workers.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import torch
from torch.utils.data import Dataset, Sampler

from vqa.data.images import BAD_IMAGE_POLICIES, DEFAULT_BACKGROUND, load_image
from vqa.data.records import QuestionRecord
from vqa.data.vocab import AnswerVocab

__all__ = ["VQADataset", "VQACollator", "ImageGroupedBatchSampler"]

logger = logging.getLogger(__name__)


class VQADataset(Dataset):
    """Questions with their decoded, transformed image and soft target.

    An item is a dict with ``question_id``, ``question``, ``image_path``,
    ``pixel_values`` (the output of ``image_transform``, usually (3, H, W)),
    ``target`` (float32 (num_answers,), see ``AnswerVocab.soft_targets``),
    ``answers``, ``answer_type`` and ``skipped`` (False). When the image
    fails under ``on_bad_image="skip"``, the item is
    ``{"skipped": True, "image_path", "question_id"}`` and ``VQACollator``
    drops it.

    Args:
        records: The questions of one split.
        vocab: Answer vocabulary of the classifier.
        image_transform: Callable from an RGB PIL image to a tensor, for
            example timm's ``create_transform``.
        on_bad_image: ``"raise"`` stops with ``ImageDecodeError`` naming the
            file; ``"skip"`` logs the path and drops the question.
        background: RGB colour behind transparent pixels.
    """

    def __init__(
        self,
        records: Sequence[QuestionRecord],
        vocab: AnswerVocab,
        image_transform: Callable[[Any], torch.Tensor],
        on_bad_image: str = "skip",
        background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    ):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(
                f"unknown on_bad_image {on_bad_image!r}; valid values: {', '.join(BAD_IMAGE_POLICIES)}"
            )
        self.records = list(records)
        self.vocab = vocab
        self.image_transform = image_transform
        self.on_bad_image = on_bad_image
        self.background = background
        # Counts images skipped in this process only. With num_workers > 0,
        # count the collated batch["skipped"] lists instead.
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = load_image(record.image_path, self.on_bad_image, self.background)
        if image is None:
            self.num_skipped += 1
            return {"skipped": True, "image_path": record.image_path, "question_id": record.question_id}
        return {
            "skipped": False,
            "question_id": record.question_id,
            "question": record.question,
            "image_path": record.image_path,
            "pixel_values": self.image_transform(image),
            "target": self.vocab.soft_targets(record.answers),
            "answers": list(record.answers),
            "answer_type": record.answer_type,
        }


class VQACollator:
    """Batch items of ``VQADataset``: tokenize, pad, and store each image once.

    The returned dict holds, for B kept questions and I distinct images:

    - ``pixel_values``: (I, 3, H, W), one row per distinct ``image_path`` in
      order of first appearance. Questions on the same image share the row of
      the first of them, so with a random transform they share its crop.
    - ``image_index``: LongTensor (B,), the ``pixel_values`` row of each question.
    - ``input_ids``: LongTensor (B, T), truncated to ``max_length`` and padded
      to the longest question of the batch.
    - ``attention_mask``: LongTensor (B, T), the tokenizer's mask: 1 for a
      real token, 0 for padding.
    - ``targets``: float32 (B, num_answers).
    - ``question_ids``, ``answers``, ``answer_types``: lists of length B.
    - ``skipped``: image paths of the questions dropped under ``"skip"``.

    When every item of a batch was skipped, the tensor entries are None and
    the lists are empty, except ``skipped``.

    Args:
        tokenizer: A Hugging Face tokenizer (called with ``padding``,
            ``truncation``, ``max_length`` and ``return_tensors="pt"``).
        max_length: Maximum number of tokens per question, special tokens included.
    """

    def __init__(self, tokenizer: Any, max_length: int):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: Sequence[Optional[dict[str, Any]]]) -> dict[str, Any]:
        kept = [item for item in items if item is not None and not item["skipped"]]
        skipped = [item["image_path"] for item in items if item is not None and item["skipped"]]
        batch: dict[str, Any] = {
            "question_ids": [item["question_id"] for item in kept],
            "answers": [item["answers"] for item in kept],
            "answer_types": [item["answer_type"] for item in kept],
            "skipped": skipped,
        }
        if not kept:
            batch.update(pixel_values=None, image_index=None, input_ids=None, attention_mask=None, targets=None)
            return batch

        rows: dict[str, int] = {}
        images = []
        image_index = []
        for item in kept:
            row = rows.get(item["image_path"])
            if row is None:
                row = rows[item["image_path"]] = len(images)
                images.append(item["pixel_values"])
            image_index.append(row)

        tokens = self.tokenizer(
            [item["question"] for item in kept],
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch.update(
            pixel_values=torch.stack(images),  # (I, 3, H, W)
            image_index=torch.tensor(image_index, dtype=torch.long),  # (B,)
            input_ids=tokens["input_ids"].long(),  # (B, T)
            attention_mask=tokens["attention_mask"].long(),  # (B, T)
            targets=torch.stack([item["target"] for item in kept]),  # (B, A)
        )
        return batch


class ImageGroupedBatchSampler(Sampler[list[int]]):
    """Yield batches that keep the questions of one image together.

    Images are shuffled (seeded by ``seed + epoch``), their questions are laid
    out one image after another, and the sequence is cut into batches of
    ``batch_size``. An image whose questions straddle a batch boundary
    appears in both batches. The order is the same for the same seed and
    epoch, in every process.

    NOTE: every process gets all batches; under DDP, shard the batches by
    rank before use.

    Args:
        image_paths: The image path of each dataset index (for example
            ``[r.image_path for r in records]``).
        batch_size: Questions per batch.
        shuffle: Shuffle images and the order of questions within an image.
        seed: Base seed of the shuffle.
        drop_last: Drop the last, smaller batch.
    """

    def __init__(
        self,
        image_paths: Sequence[str],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        groups: dict[str, list[int]] = {}
        for index, path in enumerate(image_paths):
            groups.setdefault(path, []).append(index)
        self._groups = list(groups.values())
        self._num_indices = len(image_paths)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` (call before each epoch, as with ``DistributedSampler``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self._num_indices // self.batch_size
        return -(-self._num_indices // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        groups = [list(group) for group in self._groups]
        if self.shuffle:
            rng = random.Random(self.seed + self.epoch)
            rng.shuffle(groups)
            for group in groups:
                rng.shuffle(group)
        order = [index for group in groups for index in group]
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch
