"""Readers of the official layouts, on tiny fixtures written in tmp_path."""

import json

import pytest

from vqa.data import DATASETS, QuestionRecord, is_single_answer, read_dataset
from vqa.data.readers import EASY_VQA_VAL_EVERY


def write_json(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


@pytest.fixture
def vqa_v2_root(tmp_path):
    questions = {
        "questions": [
            {"image_id": 42, "question": "Is it a dog?", "question_id": 420},
            {"image_id": 42, "question": "How many?", "question_id": 421},
            {"image_id": 7, "question": "What color?", "question_id": 70},
        ]
    }
    answers = lambda values: [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(values)]
    annotations = {
        "annotations": [
            {"question_id": 420, "image_id": 42, "answer_type": "yes/no", "question_type": "is it",
             "multiple_choice_answer": "yes", "answers": answers(["yes"] * 8 + ["no"] * 2)},
            {"question_id": 421, "image_id": 42, "answer_type": "number", "question_type": "how many",
             "multiple_choice_answer": "2", "answers": answers(["2"] * 9 + ["two"])},
            {"question_id": 70, "image_id": 7, "answer_type": "other", "question_type": "what color",
             "multiple_choice_answer": "red", "answers": answers(["red"] * 10)},
        ]
    }
    write_json(tmp_path / "Questions" / "v2_OpenEnded_mscoco_val2014_questions.json", questions)
    write_json(tmp_path / "Annotations" / "v2_mscoco_val2014_annotations.json", annotations)
    write_json(tmp_path / "Questions" / "v2_OpenEnded_mscoco_test-dev2015_questions.json", questions)
    (tmp_path / "Images" / "mscoco" / "val2014").mkdir(parents=True)
    (tmp_path / "Images" / "mscoco" / "test2015").mkdir(parents=True)
    return tmp_path


def test_vqa_v2_reads_questions_and_answers(vqa_v2_root):
    records = read_dataset("vqa_v2", vqa_v2_root, "val")
    assert len(records) == 3
    first = records[0]
    assert first.question_id == 420
    assert first.question == "Is it a dog?"
    assert first.answers == ["yes"] * 8 + ["no"] * 2
    assert first.answer_type == "yes/no"
    assert first.image_path == str(vqa_v2_root / "Images" / "mscoco" / "val2014" / "COCO_val2014_000000000042.jpg")
    assert records[1].answers[-1] == "two"
    assert records[2].image_path.endswith("COCO_val2014_000000000007.jpg")


def test_vqa_v2_test_dev_has_no_answers(vqa_v2_root):
    records = read_dataset("vqa_v2", vqa_v2_root, "test-dev")
    assert [r.answers for r in records] == [[], [], []]
    assert records[0].answer_type is None
    assert records[0].image_path.endswith("test2015/COCO_test2015_000000000042.jpg")


def test_vqa_v2_missing_annotations_names_file(vqa_v2_root):
    (vqa_v2_root / "Annotations" / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(FileNotFoundError, match="v2_mscoco_val2014_annotations.json") as error:
        read_dataset("vqa_v2", vqa_v2_root, "val")
    assert "Expected layout" in str(error.value)


def test_vqa_v2_missing_image_folder_names_it(vqa_v2_root):
    with pytest.raises(FileNotFoundError, match="train2014"):
        read_dataset("vqa_v2", vqa_v2_root, "train")


def test_vqa_v2_unknown_split():
    with pytest.raises(ValueError, match="valid splits: train, val, test, test-dev"):
        read_dataset("vqa_v2", "/nonexistent", "dev")


def test_gqa_reads_balanced_questions(tmp_path):
    questions = {
        "201307251": {"imageId": "n161313", "question": "Is the sky blue?", "answer": "yes",
                      "fullAnswer": "Yes, the sky is blue.", "types": {"structural": "verify", "semantic": "attr"}},
        "05515938": {"imageId": "2354786", "question": "What is on the table?", "answer": "cup",
                     "types": {"structural": "query", "semantic": "rel"}},
    }
    write_json(tmp_path / "questions" / "testdev_balanced_questions.json", questions)
    (tmp_path / "images").mkdir()
    records = read_dataset("gqa", tmp_path, "testdev")
    assert records == [
        QuestionRecord("201307251", str(tmp_path / "images" / "n161313.jpg"), "Is the sky blue?", ["yes"], "verify"),
        QuestionRecord("05515938", str(tmp_path / "images" / "2354786.jpg"), "What is on the table?", ["cup"], "query"),
    ]


def test_gqa_reads_train_all_shards_in_numeric_order(tmp_path):
    for k in (10, 2):
        write_json(
            tmp_path / "questions" / "train_all_questions" / f"train_all_questions_{k}.json",
            {f"q{k}": {"imageId": "1", "question": "q?", "answer": "a", "types": {"structural": "query"}}},
        )
    (tmp_path / "images").mkdir()
    records = read_dataset("gqa", tmp_path, "train_all")
    assert [r.question_id for r in records] == ["q2", "q10"]


def test_gqa_missing_questions_file(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="val_balanced_questions.json"):
        read_dataset("gqa", tmp_path, "val")


def test_clevr_reads_questions_and_program_type(tmp_path):
    questions = {
        "info": {"split": "val"},
        "questions": [
            {"image_index": 0, "image_filename": "CLEVR_val_000000.png", "question_index": 0, "split": "val",
             "question": "Are there more cubes than spheres?", "answer": "no",
             "program": [{"function": "scene"}, {"function": "greater_than"}]},
            {"image_index": 0, "image_filename": "CLEVR_val_000000.png", "question_index": 1, "split": "val",
             "question": "How many cubes?", "answer": 3, "program": [{"function": "scene"}, {"function": "count"}]},
            {"image_index": 1, "image_filename": "CLEVR_val_000001.png", "question_index": 2, "split": "val",
             "question": "What color is the cube?", "answer": "red",
             "program": [{"function": "scene"}, {"function": "query_color"}]},
        ],
    }
    write_json(tmp_path / "questions" / "CLEVR_val_questions.json", questions)
    (tmp_path / "images" / "val").mkdir(parents=True)
    records = read_dataset("clevr", tmp_path, "val")
    assert [r.question_id for r in records] == [0, 1, 2]
    assert [r.answers for r in records] == [["no"], ["3"], ["red"]]
    assert [r.answer_type for r in records] == ["compare_integer", "count", "query_attribute"]
    assert records[2].image_path == str(tmp_path / "images" / "val" / "CLEVR_val_000001.png")


def test_clevr_missing_image_folder(tmp_path):
    write_json(tmp_path / "questions" / "CLEVR_train_questions.json", {"questions": []})
    with pytest.raises(FileNotFoundError, match="images/train") as error:
        read_dataset("clevr", tmp_path, "train")
    assert "CLEVR_<split>_<image_index:06d>.png" in str(error.value)


def test_missing_root_names_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_dataset("clevr", tmp_path / "nowhere", "val")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="vqa_v2, gqa, clevr, easy_vqa, sort_of_clevr"):
        read_dataset("vqa2", "/data", "train")


def test_single_answer_flags():
    assert {name: is_single_answer(name) for name in DATASETS} == {
        "vqa_v2": False, "gqa": True, "clevr": True, "easy_vqa": True, "sort_of_clevr": True,
    }
    with pytest.raises(ValueError, match="valid names"):
        is_single_answer("coco")


def test_easy_vqa_val_is_held_out_from_train():
    pytest.importorskip("easy_vqa")
    train = read_dataset("easy_vqa", None, "train")
    val = read_dataset("easy_vqa", None, "val")
    full = read_dataset("easy_vqa", None, "train_full")
    test = read_dataset("easy_vqa", None, "test")
    assert len(full) == 38575
    assert len(test) == 9673
    assert len(train) + len(val) == len(full)
    assert {r.question_id for r in train}.isdisjoint(r.question_id for r in val)
    assert {r.image_path for r in train}.isdisjoint(r.image_path for r in val)
    assert len({r.image_path for r in val}) == 4000 // EASY_VQA_VAL_EVERY
    assert all(len(r.answers) == 1 for r in test)
    assert {r.answer_type for r in test} == {"yes/no", "shape", "color"}
    assert read_dataset("easy_vqa", None, "val") == val
