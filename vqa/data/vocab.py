"""Answer vocabulary: the classifier's output classes, and soft targets that follow the official metric."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Optional, Union

import torch

from vqa.data.records import QuestionRecord
from vqa.metrics import normalize_answer, vqa_accuracy_table

__all__ = ["AnswerVocab"]

_FORMAT = "dba-vqa answer vocabulary v1"


class AnswerVocab:
    """Normalized answers in a fixed order, with their training-split counts.

    Every entry is the output of ``vqa.metrics.normalize_answer``, so a
    predicted class can be written to a results file as is.

    Args:
        answers: The answers, most frequent first.
        counts: Training-split count of each answer (same order), if known.
    """

    def __init__(self, answers: Sequence[str], counts: Optional[Sequence[int]] = None):
        if counts is not None and len(counts) != len(answers):
            raise ValueError(f"got {len(answers)} answers but {len(counts)} counts")
        self.answers: list[str] = list(answers)
        self.counts: Optional[list[int]] = list(counts) if counts is not None else None
        self._index = {answer: i for i, answer in enumerate(self.answers)}
        if len(self._index) != len(self.answers):
            repeated = [a for a, n in Counter(self.answers).items() if n > 1]
            raise ValueError(f"answer vocabulary has repeated entries: {repeated[:10]}")

    @classmethod
    def build(
        cls,
        records: Iterable[QuestionRecord],
        top_k: Optional[int] = None,
        min_count: int = 1,
    ) -> "AnswerVocab":
        """Count the normalized human answers of a training split and keep the frequent ones.

        Every human answer counts once (a VQA v2 answer given by 10 people
        counts 10 times). Answers that normalize to an empty string are
        dropped. Ties in count are ordered alphabetically, so the result does
        not depend on record order.

        Args:
            records: Training-split records.
            top_k: Keep at most this many answers (None keeps all).
            min_count: Drop answers counted fewer times than this.

        Raises:
            ValueError: If ``top_k`` or ``min_count`` is below 1, or no answer survives.
        """
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be None or >= 1, got {top_k}")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counter: Counter[str] = Counter()
        for record in records:
            counter.update(a for a in map(normalize_answer, record.answers) if a)
        ranked = sorted((item for item in counter.items() if item[1] >= min_count), key=lambda kv: (-kv[1], kv[0]))
        if top_k is not None:
            ranked = ranked[:top_k]
        if not ranked:
            raise ValueError(
                f"no answer has min_count={min_count} or more occurrences among "
                f"{sum(counter.values())} human answers; lower min_count or check the records"
            )
        return cls([answer for answer, _ in ranked], [count for _, count in ranked])

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return answer in self._index

    def index(self, answer: str) -> Optional[int]:
        """Return the class index of ``answer`` (as is, else normalized), or None when it is out of vocabulary."""
        found = self._index.get(answer)
        return found if found is not None else self._index.get(normalize_answer(answer))

    def answer(self, i: int) -> str:
        """Return the answer string of class ``i``."""
        return self.answers[i]

    def soft_targets(self, human_answers: Sequence[str]) -> torch.Tensor:
        """Build the training target of one question, shape (num_answers,), float32.

        - Two or more human answers: each class gets its official VQA accuracy
          against them (``vqa.metrics.vqa_accuracy``), so 8 "yes" and 2 "no"
          give "yes" 1.0 and "no" about 0.6.
        - One answer (single-answer data sets): 1.0 at its normalized form.
        - No answers (test splits): all zeros.

        Answers outside the vocabulary contribute nothing, so a question whose
        answers are all out of vocabulary has an all-zero target.

        Args:
            human_answers: The raw ground-truth answers with repeats.
        """
        target = torch.zeros(len(self.answers), dtype=torch.float32)
        if len(human_answers) == 1:
            index = self.index(human_answers[0])
            if index is not None:
                target[index] = 1.0
            return target
        if not human_answers:
            return target
        # Keys are written as a prediction reads after the official
        # processing. Vocabulary entries are already normalized, so an exact
        # lookup finds the class that would receive this score.
        # NOTE: when all human answers are the same string, the official
        # script does not normalize them, so ten "Yes" give the class "yes" 0,
        # exactly as the metric would score that prediction.
        for answer, accuracy in vqa_accuracy_table(human_answers).items():
            index = self._index.get(answer)
            if index is not None:
                target[index] = accuracy
        return target

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the vocabulary as JSON: ``{"format", "answers", "counts"}``."""
        payload = {"format": _FORMAT, "answers": self.answers, "counts": self.counts}
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False, indent=0)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "AnswerVocab":
        """Read a vocabulary written by ``save``.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If the file is not a vocabulary written by ``save``.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"answer vocabulary not found: {path}")
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an answer vocabulary written by AnswerVocab.save")
        return cls(payload["answers"], payload.get("counts"))
