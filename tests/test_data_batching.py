"""VQADataset, VQACollator and ImageGroupedBatchSampler, including bad images with DataLoader workers."""

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from transformers import BertTokenizerFast

from vqa.data import AnswerVocab, ImageDecodeError, ImageGroupedBatchSampler, QuestionRecord, VQACollator, VQADataset

TRANSFORM = transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()])
WORDS = ["what", "color", "is", "the", "cat", "dog", "how", "many", "are", "there", "?"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab_file = tmp_path_factory.mktemp("tokenizer") / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab_file))


@pytest.fixture
def records(tmp_path):
    """Three images with two questions each; image c.jpg is truncated."""
    for name, value in (("a", 50), ("b", 150), ("c", 250)):
        Image.new("RGB", (20, 20), (value, value, value)).save(tmp_path / f"{name}.jpg")
    data = (tmp_path / "c.jpg").read_bytes()
    (tmp_path / "c.jpg").write_bytes(data[: len(data) // 2])
    questions = ["what color is the cat ?", "how many dogs are there ?"]
    result = []
    for image_number, name in enumerate("abc"):
        for question_number, question in enumerate(questions):
            answers = ["yes"] * 8 + ["no"] * 2 if question_number == 0 else ["2"] * 10
            result.append(QuestionRecord(10 * image_number + question_number, str(tmp_path / f"{name}.jpg"),
                                         question, answers, "yes/no" if question_number == 0 else "number"))
    return result


@pytest.fixture
def vocab():
    return AnswerVocab(["yes", "no", "2"])


def test_dataset_item_fields(records, vocab):
    item = VQADataset(records, vocab, TRANSFORM)[0]
    assert item["skipped"] is False
    assert item["question_id"] == 0
    assert item["question"] == "what color is the cat ?"
    assert item["image_path"] == records[0].image_path
    assert item["pixel_values"].shape == (3, 16, 16)
    assert item["pixel_values"].mean().item() == pytest.approx(50 / 255, abs=0.02)
    assert item["target"].tolist() == pytest.approx([1.0, 0.6, 0.0])
    assert item["answers"] == records[0].answers
    assert item["answer_type"] == "yes/no"


def test_collator_deduplicates_images(records, vocab, tokenizer):
    dataset = VQADataset(records, vocab, TRANSFORM)
    batch = VQACollator(tokenizer, max_length=32)([dataset[i] for i in (0, 2, 1, 3)])
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert batch["image_index"].tolist() == [0, 1, 0, 1]
    assert batch["image_index"].dtype == torch.long
    assert batch["question_ids"] == [0, 10, 1, 11]
    assert batch["targets"].shape == (4, 3)
    assert batch["targets"][1].tolist() == pytest.approx([1.0, 0.6, 0.0])
    assert batch["targets"][2].tolist() == [0.0, 0.0, 1.0]
    assert batch["answer_types"] == ["yes/no", "yes/no", "number", "number"]
    assert batch["answers"][2] == ["2"] * 10
    assert batch["skipped"] == []


def test_collator_truncates_and_pads(records, vocab, tokenizer):
    dataset = VQADataset(records, vocab, TRANSFORM)
    items = [dataset[0], dataset[1]]
    items[1] = dict(items[1], question="how")
    batch = VQACollator(tokenizer, max_length=5)(items)
    # "[CLS] what color is the cat ? [SEP]" is 8 tokens, truncated to 5; "[CLS] how [SEP]" padded to 5.
    assert batch["input_ids"].shape == (2, 5)
    assert batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["input_ids"][0, -1].item() == tokenizer.sep_token_id
    assert batch["input_ids"][1, 3:].tolist() == [tokenizer.pad_token_id] * 2
    longest = VQACollator(tokenizer, max_length=32)(items)
    assert longest["input_ids"].shape == (2, 8)


def test_skip_policy_drops_and_reports(records, vocab, tokenizer):
    dataset = VQADataset(records, vocab, TRANSFORM, on_bad_image="skip")
    batch = VQACollator(tokenizer, max_length=16)([dataset[i] for i in range(6)])
    assert batch["question_ids"] == [0, 1, 10, 11]
    assert batch["skipped"] == [records[4].image_path, records[5].image_path]
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert dataset.num_skipped == 2


def test_all_skipped_batch(records, vocab, tokenizer):
    dataset = VQADataset(records, vocab, TRANSFORM, on_bad_image="skip")
    batch = VQACollator(tokenizer, max_length=16)([dataset[4], dataset[5]])
    assert batch["pixel_values"] is None
    assert batch["input_ids"] is None
    assert batch["question_ids"] == []
    assert len(batch["skipped"]) == 2


def test_skip_count_correct_with_workers(records, vocab, tokenizer):
    dataset = VQADataset(records, vocab, TRANSFORM, on_bad_image="skip")
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=VQACollator(tokenizer, 16))
    seen, skipped = [], []
    for batch in loader:
        seen += batch["question_ids"]
        skipped += batch["skipped"]
    assert sorted(seen) == [0, 1, 10, 11]
    assert skipped == [records[4].image_path] * 2
    # The workers' counters never reach the main process's copy.
    assert dataset.num_skipped == 0


def test_raise_policy_stops_with_path(records, vocab, tokenizer):
    dataset = VQADataset(records, vocab, TRANSFORM, on_bad_image="raise")
    loader = DataLoader(dataset, batch_size=6, collate_fn=VQACollator(tokenizer, 16))
    with pytest.raises(ImageDecodeError, match="c.jpg"):
        next(iter(loader))


def test_unknown_bad_image_policy(records, vocab):
    with pytest.raises(ValueError, match="on_bad_image"):
        VQADataset(records, vocab, TRANSFORM, on_bad_image="ignore")


def test_grouped_sampler_keeps_images_together():
    paths = [f"img{i // 3}.jpg" for i in range(12)]  # 4 images x 3 questions
    sampler = ImageGroupedBatchSampler(paths, batch_size=6, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2
    assert sorted(i for batch in batches for i in batch) == list(range(12))
    for batch in batches:
        images = {paths[i] for i in batch}
        assert len(images) == 2
        assert all(sum(paths[i] == image for i in batch) == 3 for image in images)


def test_grouped_sampler_is_deterministic():
    paths = [f"img{i % 7}.jpg" for i in range(40)]
    first = list(ImageGroupedBatchSampler(paths, batch_size=8, seed=3))
    again = list(ImageGroupedBatchSampler(paths, batch_size=8, seed=3))
    assert first == again
    sampler = ImageGroupedBatchSampler(paths, batch_size=8, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_grouped_sampler_drop_last_and_no_shuffle():
    paths = ["a", "a", "b", "c", "c"]
    sampler = ImageGroupedBatchSampler(paths, batch_size=2, shuffle=False, drop_last=True)
    assert list(sampler) == [[0, 1], [2, 3]]
    assert len(sampler) == 2
    assert len(ImageGroupedBatchSampler(paths, batch_size=2)) == 3
