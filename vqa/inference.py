"""Answer questions about images with a saved model.

Example::

    from vqa import Predictor
    predictor = Predictor.from_pretrained("runs/easy_vqa/best")
    predictor.predict("shape.png", "what color is the shape?", top_k=3)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import torch
from PIL import Image

from vqa.data import load_image
from vqa.model import VQAModel

__all__ = ["Predictor", "Prediction", "read_jsonl_pairs"]

ImageInput = Union[str, Path, Image.Image]


@dataclass
class Prediction:
    """Top-k answers to one question, best first.

    ``scores`` are softmax probabilities for models trained with cross-entropy and
    per-answer sigmoid probabilities (each in [0, 1], not summing to 1) for models
    trained with binary cross-entropy on soft VQA scores.
    """

    question: str
    image: str
    answers: list[str]
    scores: list[float]

    def to_dict(self) -> dict:
        return {
            "image": self.image,
            "question": self.question,
            "answers": [{"answer": a, "score": round(s, 6)} for a, s in zip(self.answers, self.scores)],
        }


class Predictor:
    """Batch inference in eval mode, with the preprocessing the model was trained with.

    Args:
        model: a trained ``VQAModel``.
        device: where to run; None picks CUDA when available.
    """

    def __init__(self, model: VQAModel, device: Optional[Union[str, torch.device]] = None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.transform = model.image_encoder.build_transform(is_training=False)

    @classmethod
    def from_pretrained(cls, directory: Union[str, Path], device=None) -> "Predictor":
        return cls(VQAModel.from_pretrained(directory), device)

    def predict(self, image: ImageInput, question: str, top_k: int = 5) -> Prediction:
        """Answer one question about one image."""
        return self.predict_batch([(image, question)], top_k=top_k)[0]

    @torch.inference_mode()
    def predict_batch(self, pairs: Iterable[tuple[ImageInput, str]], top_k: int = 5) -> list[Prediction]:
        """Answer (image, question) pairs; an image used by several questions is encoded once."""
        pairs = list(pairs)
        if not pairs:
            return []
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be at least 1")
        for index, (_, question) in enumerate(pairs):
            if not str(question).strip():
                raise ValueError(f"question {index} is empty; every image needs a non-empty question")
        self.model.eval()

        pixel_rows: list[torch.Tensor] = []
        row_of_image: dict[str, int] = {}
        image_index = []
        for image, _ in pairs:
            key = str(image) if not isinstance(image, Image.Image) else f"<PIL image {id(image)}>"
            if key not in row_of_image:
                pil = load_image(image) if not isinstance(image, Image.Image) else image.convert("RGB")
                row_of_image[key] = len(pixel_rows)
                pixel_rows.append(self.transform(pil))
            image_index.append(row_of_image[key])

        questions = [question for _, question in pairs]
        tokens = self.model.text_encoder.tokenize(questions)
        logits = self.model(
            pixel_values=torch.stack(pixel_rows).to(self.device),
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
            image_index=torch.tensor(image_index, device=self.device),
        ).float()
        probs = logits.sigmoid() if self.model.config.loss == "bce" else logits.softmax(dim=-1)
        k = min(top_k, probs.shape[-1])
        top = probs.topk(k, dim=-1)

        predictions = []
        for row, (image, question) in enumerate(pairs):
            answers = [self.model.vocab.answer(int(i)) for i in top.indices[row]]
            image_name = str(image) if not isinstance(image, Image.Image) else "<PIL image>"
            predictions.append(Prediction(question, image_name, answers, top.values[row].tolist()))
        return predictions


def read_jsonl_pairs(path: Union[str, Path]) -> list[tuple[str, str]]:
    """Read ``{"image": ..., "question": ...}`` lines; relative image paths are taken from the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"batch file {path} not found; it must contain one JSON object per line")
    pairs = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number} is not valid JSON: {error}") from error
        if not isinstance(item, dict) or "image" not in item or "question" not in item:
            raise ValueError(f'{path}:{line_number} needs the keys "image" and "question", got {line.strip()!r}')
        image = Path(item["image"])
        if not image.is_absolute():
            image = path.parent / image
        pairs.append((str(image), str(item["question"])))
    return pairs
