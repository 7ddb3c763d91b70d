"""Sort-of-CLEVR generator: determinism, geometry of the answers, scaling, and the CLEVR layout."""

import hashlib
import json
import math

import numpy as np
import pytest
from PIL import Image

from vqa.data import question_group, read_dataset
from vqa.data.sort_of_clevr import COLORS, QUESTION_FAMILIES, generate

NUM_IMAGES = {"train": 6, "val": 3, "test": 2}


def digest(folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def load(folder, kind, split):
    return json.loads((folder / kind / f"CLEVR_{split}_{kind}.json").read_text())


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("soc")
    counts = generate(out, image_size=75, num_images=NUM_IMAGES, questions_per_image=36, seed=5)
    return out, counts


def test_same_seed_same_bytes(generated, tmp_path):
    out, _ = generated
    generate(tmp_path, image_size=75, num_images=NUM_IMAGES, questions_per_image=36, seed=5)
    assert digest(tmp_path) == digest(out)
    other = tmp_path / "other"
    generate(other, image_size=75, num_images=NUM_IMAGES, questions_per_image=36, seed=6)
    assert digest(other) != digest(out)


def test_layout_and_counts(generated):
    out, counts = generated
    assert counts == {"train": 216, "val": 108, "test": 72}
    for split, num_images in NUM_IMAGES.items():
        images = sorted((out / "images" / split).glob("*.png"))
        assert [p.name for p in images] == [f"CLEVR_{split}_{i:06d}.png" for i in range(num_images)]
        assert Image.open(images[0]).size == (75, 75)
        assert Image.open(images[0]).mode == "RGB"


def test_answers_follow_scene_geometry(generated):
    out, _ = generated
    for split in NUM_IMAGES:
        scenes = {s["image_index"]: s["objects"] for s in load(out, "scenes", split)["scenes"]}
        for question in load(out, "questions", split)["questions"]:
            objects = scenes[question["image_index"]]
            subject = [o for o in objects if o["color"] == question["color"]]
            assert len(subject) == 1
            subject = subject[0]
            others = [o for o in objects if o is not subject]
            distances = [math.dist((o["x"], o["y"]), (subject["x"], subject["y"])) for o in others]
            expected = {
                "nonrel_shape": subject["shape"],
                "nonrel_left": "yes" if subject["x"] < 0.5 else "no",
                "nonrel_top": "yes" if subject["y"] < 0.5 else "no",
                "rel_closest": others[int(np.argmin(distances))]["shape"],
                "rel_farthest": others[int(np.argmax(distances))]["shape"],
                "rel_count": str([o["shape"] for o in objects].count(subject["shape"])),
            }[question["question_family"]]
            assert question["answer"] == expected, question
            assert question["color"] in question["question"]


def test_scenes_have_six_distinct_colours_without_overlap(generated):
    out, _ = generated
    half = 10 / 75 / 2
    for scene in load(out, "scenes", "train")["scenes"]:
        objects = scene["objects"]
        assert sorted(o["color"] for o in objects) == sorted(COLORS)
        assert {o["shape"] for o in objects} <= {"circle", "square"}
        for i, a in enumerate(objects):
            assert half <= a["x"] <= 1 - half
            assert half <= a["y"] <= 1 - half
            for b in objects[i + 1 :]:
                # Bounding squares of two objects must not intersect.
                assert abs(a["x"] - b["x"]) > 2 * half or abs(a["y"] - b["y"]) > 2 * half


def test_pixels_match_scene(generated):
    out, _ = generated
    for scene in load(out, "scenes", "val")["scenes"]:
        pixels = np.asarray(Image.open(out / "images" / "val" / scene["image_filename"]))
        for obj in scene["objects"]:
            column, row = int(obj["x"] * 75), int(obj["y"] * 75)
            assert tuple(pixels[row, column]) == COLORS[obj["color"]]
            # A corner of the bounding box is filled for a square and background for a circle.
            corner = pixels[int((obj["y"] - 0.06) * 75), int((obj["x"] - 0.06) * 75)]
            expected = COLORS[obj["color"]] if obj["shape"] == "square" else (255, 255, 255)
            assert tuple(corner) == expected, obj


def test_families_balanced_and_questions_distinct(generated):
    out, _ = generated
    questions = load(out, "questions", "train")["questions"]
    per_image = {}
    for q in questions:
        per_image.setdefault(q["image_index"], []).append((q["question_family"], q["color"]))
    for pairs in per_image.values():
        assert len(set(pairs)) == len(pairs) == 36
    families = [q["question_family"] for q in questions]
    assert {f: families.count(f) for f in QUESTION_FAMILIES} == {f: 36 for f in QUESTION_FAMILIES}


def test_larger_images_keep_scenes_and_answers(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    generate(small, image_size=75, num_images={"train": 4}, questions_per_image=6, seed=2)
    generate(large, image_size=150, num_images={"train": 4}, questions_per_image=6, seed=2)
    assert load(small, "questions", "train")["questions"] == load(large, "questions", "train")["questions"]
    assert load(small, "scenes", "train")["scenes"] == load(large, "scenes", "train")["scenes"]
    scene = load(large, "scenes", "train")["scenes"][0]
    pixels = np.asarray(Image.open(large / "images" / "train" / "CLEVR_train_000000.png"))
    assert pixels.shape == (150, 150, 3)
    # Objects scale with the image: 20-pixel objects at 150 pixels.
    obj = scene["objects"][0]
    row = pixels[int(obj["y"] * 150)]
    assert sum(tuple(p) == COLORS[obj["color"]] for p in row) in range(18, 23)


def test_split_streams_are_independent(tmp_path):
    generate(tmp_path / "a", num_images={"train": 2, "val": 2}, questions_per_image=3, seed=0)
    generate(tmp_path / "b", num_images={"train": 5, "val": 2}, questions_per_image=3, seed=0)
    assert digest(tmp_path / "a" / "images" / "val") == digest(tmp_path / "b" / "images" / "val")


def test_reader_keeps_family_as_answer_type(generated):
    out, _ = generated
    records = read_dataset("sort_of_clevr", out, "val")
    assert len(records) == 108
    assert {r.answer_type for r in records} == set(QUESTION_FAMILIES)
    assert all(len(r.answers) == 1 for r in records)
    assert records[0].image_path == str(out / "images" / "val" / "CLEVR_val_000000.png")
    assert question_group("rel_count") == "relational"
    assert question_group("nonrel_top") == "non-relational"
    assert question_group("query_attribute") is None


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown splits"):
        generate(tmp_path, num_images={"dev": 1})
    with pytest.raises(ValueError, match="questions_per_image"):
        generate(tmp_path, num_images={"train": 1}, questions_per_image=37)
    with pytest.raises(ValueError, match="object_size"):
        generate(tmp_path, num_images={"train": 1}, object_size=10)


def test_generate_once_rewrites_only_when_settings_change(tmp_path):
    from vqa.data.sort_of_clevr import generate_once

    settings = dict(image_size=32, num_images={"train": 2, "val": 1, "test": 3}, questions_per_image=6, seed=0)
    assert generate_once(tmp_path, **settings) is True
    assert generate_once(tmp_path, **settings) is False
    changed = dict(settings, num_images={"train": 2, "val": 1, "test": 2})
    assert generate_once(tmp_path, **changed) is True
    questions = json.loads((tmp_path / "questions" / "CLEVR_test_questions.json").read_text())["questions"]
    assert len(questions) == 2 * 6
    assert json.loads((tmp_path / "generated.json").read_text())["num_images"]["test"] == 2
