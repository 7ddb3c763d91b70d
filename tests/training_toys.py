"""Tiny stand-ins for the VQA model, data set and metric, shared by the training-engine tests.

They follow the interfaces the trainer relies on, with a few hundred parameters, so
that a whole training run takes well under a second on one CPU core.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset

from vqa.config import RunConfig

NUM_ANSWERS = 4
VOCAB_SIZE = 12
IMAGE_SIZE = 4


class ToyVocab:
    def __init__(self, answers: list[str]):
        self.answers = list(answers)

    def answer(self, index: int) -> str:
        return self.answers[index]

    def __len__(self) -> int:
        return len(self.answers)


class ToyVQAModel(nn.Module):
    """Mean of the question's token embeddings plus a projection of the mean pixel, then a linear head."""

    def __init__(self, dim: int = 16, dropout: float = 0.2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.vocab = ToyVocab([f"ans{i}" for i in range(NUM_ANSWERS)])
        self.config = {"dim": dim, "dropout": dropout}
        self.token_embedding = nn.Embedding(VOCAB_SIZE, dim)
        self.image_proj = nn.Linear(3, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, NUM_ANSWERS)

    def forward(self, pixel_values, input_ids, attention_mask, image_index):
        mask = attention_mask.unsqueeze(-1).to(self.token_embedding.weight.dtype)  # (B, T, 1)
        text = (self.token_embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)
        image = self.image_proj(pixel_values.mean(dim=(2, 3)))[image_index]  # (I, D) -> (B, D)
        return self.head(self.dropout(torch.tanh(self.norm(text + image))))  # (B, A)

    def compute_loss(self, logits, targets):
        return F.binary_cross_entropy_with_logits(logits.float(), targets) * targets.shape[-1]

    def param_groups(self):
        text = list(self.token_embedding.parameters())
        text_ids = {id(p) for p in text}
        rest = [p for p in self.parameters() if id(p) not in text_ids]
        return [{"name": "text", "params": text, "lr_mult": 0.5}, {"name": "fusion", "params": rest, "lr_mult": 1.0}]

    def save_pretrained(self, directory):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))
        return directory


class ToyVQADataset(Dataset):
    """Question ``i`` is the token list ``[i % 4 + 1, ...]`` and its answer is ``ans{i % 4}``.

    Every fifth question has only 2 of 10 annotators giving the right answer, so a
    correct prediction scores 2/3 there under ``toy_score``.
    """

    def __init__(self, size: int, offset: int = 0, unreadable: tuple[int, ...] = ()):
        self.size = size
        self.offset = offset
        self.unreadable = set(unreadable)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        i = index + self.offset
        if index in self.unreadable:
            return {"skipped": True, "image_path": f"images/{i}.png", "question_id": 1000 + i}
        answer = i % NUM_ANSWERS
        generator = torch.Generator().manual_seed(i)
        humans = [f"ans{answer}"] * (2 if i % 5 == 0 else 10)
        humans += ["other"] * (10 - len(humans))
        return {
            "image": torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
            "tokens": [answer + 1, 5 + i % 3] if i % 2 else [answer + 1],
            "answer": answer,
            "question_id": 1000 + i,
            "answers": humans,
            "answer_type": "even" if i % 2 == 0 else "odd",
        }


def toy_collate(items: list[dict]) -> dict:
    """Batch like ``vqa.data.VQACollator``: unreadable items are dropped and listed in ``skipped``."""
    skipped = [item["image_path"] for item in items if item.get("skipped")]
    items = [item for item in items if not item.get("skipped")]
    if not items:
        empty = dict.fromkeys(("pixel_values", "image_index", "input_ids", "attention_mask", "targets"))
        return {**empty, "question_ids": [], "answers": [], "answer_types": [], "skipped": skipped}
    max_len = max(len(item["tokens"]) for item in items)
    input_ids = torch.zeros(len(items), max_len, dtype=torch.long)
    attention_mask = torch.zeros(len(items), max_len, dtype=torch.long)
    for row, item in enumerate(items):
        input_ids[row, : len(item["tokens"])] = torch.tensor(item["tokens"])
        attention_mask[row, : len(item["tokens"])] = 1
    targets = torch.zeros(len(items), NUM_ANSWERS)
    targets[torch.arange(len(items)), torch.tensor([item["answer"] for item in items])] = 1.0
    return {
        "pixel_values": torch.stack([item["image"] for item in items]),
        "image_index": torch.arange(len(items)),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "targets": targets,
        "question_ids": [item["question_id"] for item in items],
        "answers": [item["answers"] for item in items],
        "answer_types": [item["answer_type"] for item in items],
        "skipped": skipped,
    }


def toy_score(prediction: str, human_answers: list[str], single_answer: bool) -> float:
    """Exact match, or min(1, matching annotators / 3) as a simplified VQA accuracy."""
    if single_answer:
        return float(prediction == human_answers[0])
    return min(1.0, human_answers.count(prediction) / 3)


def make_config(output_dir, **sections) -> RunConfig:
    """A small CPU run config; ``sections`` maps a section name to a dict of overrides."""
    cfg = OmegaConf.structured(RunConfig)
    cfg.data.batch_size = 4
    cfg.data.eval_batch_size = 5
    cfg.data.num_workers = 0
    cfg.optim.lr = 0.05
    cfg.optim.warmup_steps = 2
    cfg.optim.weight_decay = 0.01
    cfg.train.epochs = 2
    cfg.train.device = "cpu"
    cfg.train.precision = "fp32"
    cfg.train.log_every = 1
    cfg.train.output_dir = str(output_dir)
    for section, values in sections.items():
        for key, value in values.items():
            setattr(cfg[section], key, value)
    return cfg
