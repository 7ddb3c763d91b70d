"""Learnability probe: train the fusion stack and head on cached frozen image features.

An ablation run spends most of its time in the fusion stack at large image sizes, so it can
only afford a few hundred steps on a CPU. Before spending that budget, the probe answers a
cheaper question: does this head, fusion layout and learning rate learn Sort-of-CLEVR at all,
and after how many steps? It needs a frozen CNN image encoder (``freeze_blocks: -1``), computes
its feature maps once per image, and then trains everything after them (the token projection,
the fusion stack and the head) on random batches of questions. It evaluates each question
family on the test split every ``eval_every`` steps.

The probe is a diagnostic, not a training recipe: it has no checkpoints, no validation-based
model choice and no data loader. ``scripts/probe_sort_of_clevr.py`` is its command line.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from PIL import Image

from vqa.config import RunConfig
from vqa.data import AnswerVocab, read_clevr
from vqa.data.sort_of_clevr import QUESTION_FAMILIES, RELATIONAL_FAMILIES, generate_once
from vqa.model import VQAModel
from vqa.training.optim import build_optimizer, build_scheduler

__all__ = ["ProbeSettings", "run_probe"]

logger = logging.getLogger("vqa.ablation.probe")


@dataclass
class ProbeSettings:
    """Data, budget and switches of one probe run.

    Attributes:
        data_dir: Folder for the generated Sort-of-CLEVR copy; reused when it already exists.
        train_images, test_images: Images per split; each image has one question per family.
        steps: Optimizer steps.
        batch_questions: Questions per step, drawn at random from the training split.
        eval_every: Evaluate on the test split every this many steps (and after the last).
        use_fusion: False feeds the encoder tokens straight to the head, to test the head alone.
        logit_scale: Replaces the guided pool's logit scale when set.
        seed: Seeds the data order and the model initialization.
    """

    data_dir: str
    train_images: int = 2000
    test_images: int = 300
    steps: int = 1000
    batch_questions: int = 64
    eval_every: int = 250
    use_fusion: bool = True
    logit_scale: Optional[float] = None
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError naming the setting that cannot work."""
        for name in ("train_images", "test_images", "steps", "batch_questions", "eval_every"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name}={value} must be at least 1")
        questions = self.train_images * len(QUESTION_FAMILIES)
        if self.batch_questions > questions:
            raise ValueError(
                f"batch_questions={self.batch_questions} is larger than the {questions} training questions "
                f"({self.train_images} images with {len(QUESTION_FAMILIES)} each); use a smaller batch or more images"
            )
        if self.logit_scale is not None and not (0 < self.logit_scale < math.inf):
            raise ValueError(f"logit_scale={self.logit_scale} must be a positive finite number")


def _encode_images(model: VQAModel, paths: list[str]) -> dict[str, torch.Tensor]:
    encoder = model.image_encoder
    transform = encoder.build_transform(is_training=False)
    encoder.backbone.eval()
    features = {}
    with torch.no_grad():
        for path in paths:
            with Image.open(path) as image:
                pixels = transform(image.convert("RGB")).unsqueeze(0)
            features[path] = encoder.backbone(pixels)[0][0]
    return features


def run_probe(
    cfg: RunConfig,
    settings: ProbeSettings,
    log: Callable[[str], None] = logger.info,
) -> list[dict[str, Any]]:
    """Train and evaluate with ``settings``; return one record per evaluation.

    Each record contains ``step``, ``seconds`` (training time so far), ``loss`` (the last batch),
    ``accuracy``, ``relational``, ``non_relational`` and ``families`` (accuracy per question
    family). The accuracies are in percent.

    The data set is generated into ``settings.data_dir`` unless that folder already holds a copy
    written with the same image size and counts (``probe_data.json`` records them).

    Raises:
        ValueError: If a setting cannot work (see ``ProbeSettings.check``), or the image encoder
            is a ViT or is not fully frozen.
    """
    settings.check()
    if cfg.model.image.freeze_blocks != -1:
        raise ValueError(
            f"the probe caches image features, so it needs model.image.freeze_blocks=-1, got {cfg.model.image.freeze_blocks}"
        )
    if settings.logit_scale is not None and cfg.model.head_image_pool != "guided":
        raise ValueError("logit_scale applies to model.head_image_pool=guided only")
    root = Path(settings.data_dir)
    written = generate_once(
        root,
        stamp_name="probe_data.json",
        image_size=cfg.model.image.img_size,
        num_images={"train": settings.train_images, "val": 1, "test": settings.test_images},
        questions_per_image=len(QUESTION_FAMILIES),
        seed=0,
    )
    log(f"{'wrote' if written else 'reusing'} Sort-of-CLEVR at {cfg.model.image.img_size}px in {root}")
    train_records = read_clevr(root, "train")
    test_records = read_clevr(root, "test")
    vocab = AnswerVocab.build(train_records)

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    model = VQAModel(cfg.model, vocab)
    if model.image_encoder.is_vit:
        raise ValueError(f"the probe needs a CNN image encoder, got the ViT {cfg.model.image.name!r}")
    if settings.logit_scale is not None:
        model.head.image_pool.logit_scale = settings.logit_scale

    start = time.perf_counter()
    features = _encode_images(model, sorted({r.image_path for r in train_records + test_records}))
    log(f"encoded {len(features)} images in {time.perf_counter() - start:.0f} s")
    answer_index = {answer: i for i, answer in enumerate(vocab.answers)}

    def logits_for(records) -> torch.Tensor:
        image = model.image_encoder.tokens_from_features(torch.stack([features[r.image_path] for r in records]))
        tokens = model.text_encoder.tokenize([r.question for r in records])
        text_mask = tokens["attention_mask"].bool()
        text = model.text_encoder(tokens["input_ids"], text_mask)
        if settings.use_fusion:
            text, image = model.fusion(text, text_mask, image)
        return model.head(text, text_mask, image, None)

    def evaluate() -> dict[str, Any]:
        model.eval()
        correct: dict[str, list[bool]] = {family: [] for family in QUESTION_FAMILIES}
        with torch.no_grad():
            for i in range(0, len(test_records), 256):
                chunk = test_records[i : i + 256]
                for record, pred in zip(chunk, logits_for(chunk).argmax(-1).tolist()):
                    correct[record.answer_type].append(vocab.answers[pred] == record.answers[0])
        model.train()

        def percent(values: list[bool]) -> float:
            return round(100.0 * sum(values) / max(len(values), 1), 1)

        relational = [c for f, values in correct.items() if f in RELATIONAL_FAMILIES for c in values]
        other = [c for f, values in correct.items() if f not in RELATIONAL_FAMILIES for c in values]
        return {
            "accuracy": percent(relational + other),
            "relational": percent(relational),
            "non_relational": percent(other),
            "families": {family: percent(values) for family, values in correct.items()},
        }

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, settings.steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    history = []
    model.train()
    train_seconds = 0.0
    for step in range(1, settings.steps + 1):
        step_start = time.perf_counter()
        batch = rng.sample(train_records, settings.batch_questions)
        targets = torch.tensor([answer_index[r.answers[0]] for r in batch])
        loss = F.cross_entropy(logits_for(batch).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        train_seconds += time.perf_counter() - step_start
        if step % settings.eval_every == 0 or step == settings.steps:
            record = {"step": step, "seconds": round(train_seconds, 1), "loss": round(loss.item(), 4), **evaluate()}
            history.append(record)
            families = " ".join(f"{f}={a}" for f, a in record["families"].items())
            log(
                f"step {step} ({record['seconds']:.0f} s) loss {record['loss']:.3f} accuracy {record['accuracy']} "
                f"relational {record['relational']} non-relational {record['non_relational']} | {families}"
            )
    return history
