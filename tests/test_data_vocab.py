"""Answer vocabulary: counting, top-K, soft targets that follow the official metric."""

import pytest
import torch

from vqa.data import AnswerVocab, QuestionRecord
from vqa.metrics import vqa_accuracy


def records_with(*answer_lists):
    return [QuestionRecord(i, f"{i}.jpg", "q", list(answers), None) for i, answers in enumerate(answer_lists)]


def test_build_counts_normalized_answers():
    vocab = AnswerVocab.build(records_with(["Yes", "yes.", "two"], ["2", "the dog", "dog", "a"]))
    # "a" normalizes to "" and is dropped; ties are ordered alphabetically.
    assert vocab.answers == ["2", "dog", "yes"]
    assert vocab.counts == [2, 2, 2]
    assert len(vocab) == 3


def test_build_top_k_and_min_count():
    records = records_with(["a cat"] * 5 + ["dog"] * 3 + ["bird"])
    assert AnswerVocab.build(records, top_k=2).answers == ["cat", "dog"]
    assert AnswerVocab.build(records, min_count=3).answers == ["cat", "dog"]
    assert AnswerVocab.build(records, min_count=4).answers == ["cat"]
    with pytest.raises(ValueError, match="min_count=10"):
        AnswerVocab.build(records, min_count=10)
    with pytest.raises(ValueError, match="top_k"):
        AnswerVocab.build(records, top_k=0)


def test_index_and_answer():
    vocab = AnswerVocab(["yes", "no", "2"])
    assert vocab.index("no") == 1
    assert vocab.index("Two") == 2
    assert vocab.index("zebra") is None
    assert vocab.answer(0) == "yes"


def test_soft_targets_split_annotators():
    vocab = AnswerVocab(["yes", "no", "maybe"])
    target = vocab.soft_targets(["yes"] * 8 + ["no"] * 2)
    assert target.dtype == torch.float32
    assert target.shape == (3,)
    assert target[0].item() == 1.0
    assert target[1].item() == pytest.approx(0.6)
    assert target[2].item() == 0.0


def test_soft_targets_equal_official_accuracy_per_class():
    vocab = AnswerVocab(["2", "3", "red", "black white", "dog", "yes"])
    cases = [
        ["two", "2", "2.", "3", "three", "3", "red", "Red", "red", "black/white"],
        ["Dog"] * 10,
        ["dog"] * 10,
        ["yes", "yes", "no", "no", "no", "no", "no", "no", "no", "no"],
    ]
    for humans in cases:
        expected = torch.tensor([vqa_accuracy(answer, humans) for answer in vocab.answers], dtype=torch.float32)
        assert torch.equal(vocab.soft_targets(humans), expected), humans


def test_soft_targets_out_of_vocabulary_is_zero():
    vocab = AnswerVocab(["yes", "no"])
    assert torch.equal(vocab.soft_targets(["giraffe"] * 10), torch.zeros(2))
    assert torch.equal(vocab.soft_targets(["giraffe"]), torch.zeros(2))


def test_soft_targets_single_answer_is_one_hot():
    vocab = AnswerVocab(["circle", "square", "2"])
    assert vocab.soft_targets(["Square"]).tolist() == [0.0, 1.0, 0.0]
    assert vocab.soft_targets(["two"]).tolist() == [0.0, 0.0, 1.0]
    assert vocab.soft_targets([]).tolist() == [0.0, 0.0, 0.0]


def test_save_load_round_trip(tmp_path):
    vocab = AnswerVocab.build(records_with(["yes", "yes", "no", "café"]))
    path = tmp_path / "answers.json"
    vocab.save(path)
    loaded = AnswerVocab.load(path)
    assert loaded.answers == vocab.answers == ["yes", "café", "no"]
    assert loaded.counts == [2, 1, 1]


def test_load_rejects_other_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an answer vocabulary"):
        AnswerVocab.load(path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        AnswerVocab.load(tmp_path / "nope.json")


def test_repeated_entries_rejected():
    with pytest.raises(ValueError, match="repeated"):
        AnswerVocab(["yes", "yes"])
