"""Readers for the official layouts of VQA v2, GQA, CLEVR v1.0, easy-VQA and Sort-of-CLEVR.

Every reader returns a list of ``QuestionRecord`` in file order. Image files
are not checked here, because that would stat every file of the split. A
missing image surfaces when it is loaded, under the loader's bad-image policy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from vqa.data.records import QuestionRecord, check_dataset_name

__all__ = [
    "read_dataset",
    "read_vqa_v2",
    "read_gqa",
    "read_clevr",
    "read_easy_vqa",
    "read_sort_of_clevr",
    "VQA_V2_LAYOUT",
    "GQA_LAYOUT",
    "CLEVR_LAYOUT",
    "EASY_VQA_VAL_EVERY",
]

PathLike = Union[str, os.PathLike]

VQA_V2_LAYOUT = """\
<root>/
  Questions/v2_OpenEnded_mscoco_{train2014,val2014,test2015,test-dev2015}_questions.json
  Annotations/v2_mscoco_{train2014,val2014}_annotations.json
  Images/mscoco/{train2014,val2014,test2015}/COCO_<folder>_<image_id:012d>.jpg
(the JSON files may also sit directly in <root>, and the image folders in
<root>/images/ or <root>/)"""

GQA_LAYOUT = """\
<root>/
  questions/{train,val,testdev,test,challenge,submission}_balanced_questions.json
  questions/{val,testdev,...}_all_questions.json, questions/train_all_questions/train_all_questions_<k>.json
  images/<imageId>.jpg
(the question files may also sit directly in <root>)"""

CLEVR_LAYOUT = """\
<root>/
  questions/CLEVR_{train,val,test}_questions.json
  images/{train,val,test}/CLEVR_<split>_<image_index:06d>.png
  scenes/CLEVR_{train,val}_scenes.json (not read here)"""

# easy-VQA ships only train and test. Every train image whose id is a multiple
# of this number (10 %) is held out as "val", together with all its questions.
EASY_VQA_VAL_EVERY = 10


def _missing(what: str, path: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found: {path}\nExpected layout:\n{layout}")


def _first_existing(candidates: list[Path], what: str, layout: str, want_dir: bool = False) -> Path:
    for candidate in candidates:
        if (candidate.is_dir() if want_dir else candidate.is_file()):
            return candidate
    tried = "\n".join(f"  {c}" for c in candidates)
    raise FileNotFoundError(f"{what} not found; tried:\n{tried}\nExpected layout:\n{layout}")


def _load_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def _check_root(root: PathLike, layout: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _missing("data set folder", root, layout)
    return root


# ---------------------------------------------------------------- VQA v2

# Split name -> (question file part, image folder).
_VQA_V2_SPLITS = {
    "train": ("train2014", "train2014"),
    "val": ("val2014", "val2014"),
    "test": ("test2015", "test2015"),
    "test-dev": ("test-dev2015", "test2015"),
}


def read_vqa_v2(root: PathLike, split: str) -> list[QuestionRecord]:
    """Read VQA v2 questions, their 10 human answers and answer types.

    Args:
        root: Folder in the layout of ``VQA_V2_LAYOUT``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"test-dev"`` (or the
            file names' ``"train2014"``, ``"val2014"``, ``"test2015"``,
            ``"test-dev2015"``). Test splits have no answers and
            ``answer_type`` None.

    Raises:
        ValueError: If ``split`` is unknown.
        FileNotFoundError: If a JSON file or the image folder is missing.
    """
    by_file_part = {part: key for key, (part, _) in _VQA_V2_SPLITS.items()}
    key = by_file_part.get(split, split)
    if key not in _VQA_V2_SPLITS:
        raise ValueError(f"unknown VQA v2 split {split!r}; valid splits: {', '.join(_VQA_V2_SPLITS)}")
    file_part, image_folder = _VQA_V2_SPLITS[key]
    root = _check_root(root, VQA_V2_LAYOUT)

    question_name = f"v2_OpenEnded_mscoco_{file_part}_questions.json"
    question_file = _first_existing(
        [root / "Questions" / question_name, root / question_name], "VQA v2 questions file", VQA_V2_LAYOUT
    )
    image_dir = _first_existing(
        [root / "Images" / "mscoco" / image_folder, root / "images" / image_folder, root / image_folder],
        "VQA v2 image folder",
        VQA_V2_LAYOUT,
        want_dir=True,
    )
    annotations: dict[int, dict[str, Any]] = {}
    if key in ("train", "val"):
        annotation_name = f"v2_mscoco_{file_part}_annotations.json"
        annotation_file = _first_existing(
            [root / "Annotations" / annotation_name, root / annotation_name],
            "VQA v2 annotations file",
            VQA_V2_LAYOUT,
        )
        annotations = {a["question_id"]: a for a in _load_json(annotation_file)["annotations"]}

    records = []
    for question in _load_json(question_file)["questions"]:
        qid = question["question_id"]
        image_name = f"COCO_{image_folder}_{question['image_id']:012d}.jpg"
        annotation = annotations.get(qid)
        if annotations and annotation is None:
            raise ValueError(f"{question_file}: question {qid} has no entry in the annotations file")
        records.append(
            QuestionRecord(
                question_id=qid,
                image_path=str(image_dir / image_name),
                question=question["question"],
                answers=[a["answer"] for a in annotation["answers"]] if annotation else [],
                answer_type=annotation["answer_type"] if annotation else None,
            )
        )
    return records


# ---------------------------------------------------------------- GQA


def _gqa_question_files(root: Path, split: str) -> list[Path]:
    if split == "train_all":
        shard_dir = _first_existing(
            [root / "questions" / "train_all_questions", root / "train_all_questions"],
            "GQA train_all_questions folder",
            GQA_LAYOUT,
            want_dir=True,
        )
        shards = sorted(shard_dir.glob("train_all_questions_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        if not shards:
            raise _missing("GQA shard train_all_questions_<k>.json", shard_dir / "train_all_questions_0.json", GQA_LAYOUT)
        return shards
    name = f"{split}_questions.json" if split.endswith("_all") else f"{split}_balanced_questions.json"
    return [_first_existing([root / "questions" / name, root / name], "GQA questions file", GQA_LAYOUT)]


def read_gqa(root: PathLike, split: str) -> list[QuestionRecord]:
    """Read GQA questions (keyed by question id) with their single answer.

    ``answer_type`` is the structural type (``verify``, ``query``,
    ``choose``, ``logical``, ``compare``), the grouping GQA reports.

    Args:
        root: Folder in the layout of ``GQA_LAYOUT``.
        split: ``"train"``, ``"val"``, ``"testdev"``, ``"test"``,
            ``"challenge"`` or ``"submission"`` read the balanced file;
            ``"<split>_all"`` (for example ``"val_all"``, ``"train_all"``)
            reads the unbalanced one. Questions without an ``answer`` field
            (test, challenge) get an empty answer list.

    Raises:
        FileNotFoundError: If a questions file or the images folder is missing.
    """
    root = _check_root(root, GQA_LAYOUT)
    image_dir = _first_existing([root / "images"], "GQA images folder", GQA_LAYOUT, want_dir=True)
    records = []
    for question_file in _gqa_question_files(root, split):
        for qid, question in _load_json(question_file).items():
            answer = question.get("answer")
            types = question.get("types") or {}
            records.append(
                QuestionRecord(
                    question_id=str(qid),
                    image_path=str(image_dir / f"{question['imageId']}.jpg"),
                    question=question["question"],
                    answers=[answer] if answer is not None else [],
                    answer_type=types.get("structural"),
                )
            )
    return records


# ---------------------------------------------------------------- CLEVR and Sort-of-CLEVR


def _clevr_question_type(question: dict[str, Any]) -> Optional[str]:
    """Return the generator's question family, or the CLEVR category of the last program step."""
    if "question_family" in question:
        return question["question_family"]
    program = question.get("program")
    if not program:
        return None
    last = program[-1].get("function", program[-1].get("type"))
    if last in ("exist", "count"):
        return last
    if last in ("equal_integer", "less_than", "greater_than"):
        return "compare_integer"
    if last.startswith("equal_"):
        return "compare_attribute"
    if last.startswith("query_"):
        return "query_attribute"
    return last


def read_clevr(root: PathLike, split: str) -> list[QuestionRecord]:
    """Read CLEVR v1.0 questions (also the layout written by the Sort-of-CLEVR generator).

    ``question_id`` is ``question_index``. ``answer_type`` is the question
    entry's ``question_family`` when present (Sort-of-CLEVR), otherwise the
    category of the program's last step: ``exist``, ``count``,
    ``compare_integer``, ``compare_attribute`` or ``query_attribute``.

    Args:
        root: Folder in the layout of ``CLEVR_LAYOUT``.
        split: ``"train"``, ``"val"`` or ``"test"`` (test has no answers).

    Raises:
        FileNotFoundError: If the questions file or the image folder is missing.
    """
    root = _check_root(root, CLEVR_LAYOUT)
    question_file = root / "questions" / f"CLEVR_{split}_questions.json"
    if not question_file.is_file():
        raise _missing("CLEVR questions file", question_file, CLEVR_LAYOUT)
    image_dir = root / "images" / split
    if not image_dir.is_dir():
        raise _missing("CLEVR image folder", image_dir, CLEVR_LAYOUT)

    records = []
    for question in _load_json(question_file)["questions"]:
        answer = question.get("answer")
        records.append(
            QuestionRecord(
                question_id=question["question_index"],
                image_path=str(image_dir / question["image_filename"]),
                question=question["question"],
                answers=[str(answer)] if answer is not None else [],
                answer_type=_clevr_question_type(question),
            )
        )
    return records


def read_sort_of_clevr(root: PathLike, split: str) -> list[QuestionRecord]:
    """Read a Sort-of-CLEVR folder written by ``vqa.data.sort_of_clevr.generate``.

    Args:
        root: The generator's ``out_dir`` (CLEVR layout).
        split: ``"train"``, ``"val"`` or ``"test"``.
    """
    return read_clevr(root, split)


# ---------------------------------------------------------------- easy-VQA

_EASY_VQA_SHAPES = frozenset({"circle", "rectangle", "triangle"})


def _easy_vqa_answer_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in _EASY_VQA_SHAPES else "color"


def read_easy_vqa(root: Optional[PathLike] = None, split: str = "train") -> list[QuestionRecord]:
    """Read easy-VQA from the installed ``easy-vqa`` package.

    ``question_id`` is the position of the question in the package's train or
    test question list, so ids are unique within train+val and within test.
    ``answer_type`` is ``yes/no``, ``shape`` or ``color``.

    Args:
        root: Ignored; the data ships inside the package.
        split: ``"train"`` (package train minus the hold-out), ``"val"``
            (package train images whose id is a multiple of
            ``EASY_VQA_VAL_EVERY``, about 10 %), ``"train_full"`` (all package
            train questions) or ``"test"`` (the package's test split).

    Raises:
        ValueError: If ``split`` is unknown.
        ImportError: If the ``easy-vqa`` package is not installed.
    """
    del root
    valid = ("train", "val", "train_full", "test")
    if split not in valid:
        raise ValueError(f"unknown easy-VQA split {split!r}; valid splits: {', '.join(valid)}")
    try:
        import easy_vqa
    except ImportError as error:
        raise ImportError(
            "easy-VQA needs the easy-vqa package: pip install easy-vqa (or pip install -e '.[offline]')"
        ) from error

    if split == "test":
        texts, answers, image_ids = easy_vqa.get_test_questions()
        image_paths = easy_vqa.get_test_image_paths()
    else:
        texts, answers, image_ids = easy_vqa.get_train_questions()
        image_paths = easy_vqa.get_train_image_paths()

    records = []
    for index, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids)):
        held_out = image_id % EASY_VQA_VAL_EVERY == 0
        if (split == "train" and held_out) or (split == "val" and not held_out):
            continue
        records.append(
            QuestionRecord(
                question_id=index,
                image_path=image_paths[image_id],
                question=text,
                answers=[answer],
                answer_type=_easy_vqa_answer_type(answer),
            )
        )
    return records


# ---------------------------------------------------------------- dispatch

_READERS = {
    "vqa_v2": read_vqa_v2,
    "gqa": read_gqa,
    "clevr": read_clevr,
    "easy_vqa": read_easy_vqa,
    "sort_of_clevr": read_sort_of_clevr,
}


def read_dataset(name: str, root: Optional[PathLike], split: str) -> list[QuestionRecord]:
    """Read one split of a data set by name.

    Args:
        name: One of ``vqa.data.DATASETS``.
        root: The data set folder (ignored for ``easy_vqa``).
        split: A split name of that data set (see each reader).

    Raises:
        ValueError: If ``name`` or ``split`` is unknown.
        FileNotFoundError: If a file or folder of the layout is missing.
    """
    reader = _READERS[check_dataset_name(name)]
    if name != "easy_vqa" and root is None:
        raise ValueError(f"data set {name!r} needs a root folder; see data/README.md for its layout")
    return reader(root, split)
