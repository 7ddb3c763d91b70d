"""Official VQA accuracy, exact match and results-file evaluation."""

import json
import logging
import sys

import pytest

from vqa.data import QuestionRecord
from vqa.metrics import (
    evaluate_results,
    exact_match,
    load_results,
    normalize_answer,
    score,
    vqa_accuracy,
    write_results,
)


def official_formula(matches_per_subset):
    """The official script's arithmetic: min(1, n/3) per leave-one-out subset, builtin sum, divide."""
    subset_scores = [min(1, float(n) / 3) for n in matches_per_subset]
    return float(sum(subset_scores)) / len(subset_scores)


# E1: eight "yes" and two "no".
def test_split_annotators_yes_scores_one():
    humans = ["yes"] * 8 + ["no"] * 2
    assert vqa_accuracy("yes", humans) == 1.0


def test_split_annotators_no_scores_point_six():
    humans = ["yes"] * 8 + ["no"] * 2
    result = vqa_accuracy("no", humans)
    # Leaving out a "yes" leaves 2 matches (8 subsets), leaving out a "no" leaves 1 (2 subsets).
    assert result == official_formula([2] * 8 + [1] * 2)
    assert result == pytest.approx(0.6, abs=1e-12)
    if sys.version_info < (3, 12):
        # Plain left-to-right float addition, as the official script gets on Python 3.11.
        assert result == 0.5999999999999999


def test_split_annotators_order_changes_last_bit():
    # The official script sums subset scores in annotation order; "no" first
    # happens to give exactly 0.6 on Python 3.11.
    result = vqa_accuracy("no", ["no"] * 2 + ["yes"] * 8)
    assert result == official_formula([1] * 2 + [2] * 8)
    assert result == pytest.approx(0.6, abs=1e-12)


@pytest.mark.parametrize(
    ("num_matching", "expected"),
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_matching_annotators_score(num_matching, expected):
    humans = ["cat"] * num_matching + ["dog"] * (10 - num_matching)
    result = vqa_accuracy("cat", humans)
    # These are the exact floats of the official arithmetic (0.3, not 1/3 and
    # not 0.30000000000000004) for this answer order on Python 3.11.
    assert result == official_formula([num_matching - 1] * num_matching + [num_matching] * (10 - num_matching))
    assert result == pytest.approx(expected, abs=1e-12)
    if sys.version_info < (3, 12):
        assert result == expected


def test_vqa_accuracy_normalizes_when_answers_disagree():
    humans = ["two", "2", "Two.", "2 ", "three", "3", "3", "four", "4", "the 4"]
    # "2" matches 4 annotators after normalization, "4" matches 3.
    assert vqa_accuracy("two", humans) == vqa_accuracy("2", humans)
    assert vqa_accuracy("2", humans) == pytest.approx(1.0)
    assert vqa_accuracy("A four!", humans) == pytest.approx(0.9)


def test_vqa_accuracy_no_normalization_when_answers_agree():
    # All ten typed the same string, so the official script compares the
    # stripped strings without punctuation or article processing.
    humans = ["Two"] * 10
    assert vqa_accuracy(" Two\n", humans) == 1.0
    assert vqa_accuracy("two", humans) == 0.0
    assert vqa_accuracy("2", humans) == 0.0


def test_vqa_accuracy_strips_human_whitespace():
    humans = ["yes\t"] * 5 + ["yes"] * 5
    # After stripping all answers are identical, so no normalization happens.
    assert vqa_accuracy("yes", humans) == 1.0
    assert vqa_accuracy("Yes", humans) == 0.0


def test_vqa_accuracy_rejects_single_answer():
    with pytest.raises(ValueError, match="at least 2 human answers"):
        vqa_accuracy("yes", ["yes"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  The Dog  ", "dog"),
        ("a red car", "red car"),
        ("Two", "2"),
        ("none", "0"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("yes.", "yes"),
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("black/white", "black white"),
        ("black / white", "black white"),
        ("hot-dog", "hot dog"),
        ("what?!", "what"),
        ("t-shirt, jeans", "t shirt jeans"),
        # A digit-comma-digit anywhere deletes every mark instead of spacing it.
        ("t-shirt 1,5", "tshirt 15"),
        ("man's", "man's"),
        ("a", ""),
    ],
)
def test_normalize_answer_official_rules(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_removes_at_most_32_periods():
    # The official script passes re.UNICODE (32) as the count argument of sub().
    assert normalize_answer("." * 40) == "." * 8


def test_exact_match_after_normalization():
    assert exact_match("The Circle.", "circle") == 1.0
    assert exact_match("two", "2") == 1.0
    assert exact_match("square", "circle") == 0.0


def test_score_dispatches_on_single_answer():
    assert score("Yes", ["yes"], single_answer=True) == 1.0
    assert score("no", ["yes"] * 8 + ["no"] * 2, single_answer=False) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="exactly one"):
        score("yes", ["yes", "no"], single_answer=True)


def make_records():
    return [
        QuestionRecord(1, "a.jpg", "q1", ["yes"] * 10, "yes/no"),
        QuestionRecord(2, "a.jpg", "q2", ["2"] * 9 + ["3"], "number"),
        QuestionRecord(3, "b.jpg", "q3", ["red"] * 2 + ["blue"] * 8, "other"),
        QuestionRecord(4, "b.jpg", "q4", ["no"] * 10, "yes/no"),
    ]


def test_evaluate_results_overall_and_per_type():
    results = [
        {"question_id": 1, "answer": "yes"},
        {"question_id": 2, "answer": "2"},
        {"question_id": 3, "answer": "red"},
        {"question_id": 4, "answer": "yes"},
    ]
    report = evaluate_results(results, make_records(), single_answer=False)
    assert report["overall"] == round(100 * (1.0 + 1.0 + 0.6 + 0.0) / 4, 2)
    assert report["overall"] == 65.0
    assert report["per_answer_type"] == {"yes/no": 50.0, "number": 100.0, "other": 60.0}
    assert report["num_scored"] == 4
    assert report["missing"] == 0
    assert report["extra"] == 0


def test_evaluate_results_rounds_to_two_decimals():
    records = [QuestionRecord(1, "a.jpg", "q", ["x"] + ["y"] * 9, None)]
    report = evaluate_results({1: "x"}, records, single_answer=False)
    assert report["overall"] == 30.0
    unrounded = evaluate_results({1: "x"}, records, single_answer=False, decimals=None)
    assert unrounded["overall"] == 100 * 0.3


# E2: results that lack some ids and hold ids that are not in the split.
def test_evaluate_results_reports_missing_and_extra(caplog):
    results = [
        {"question_id": 1, "answer": "yes"},
        {"question_id": 3, "answer": "red"},
        {"question_id": 99, "answer": "yes"},
        {"question_id": 100, "answer": "no"},
        {"question_id": 101, "answer": "no"},
    ]
    with caplog.at_level(logging.WARNING, logger="vqa.metrics"):
        report = evaluate_results(results, make_records(), single_answer=False)
    assert report["missing"] == 2
    assert report["extra"] == 3
    assert report["missing_ids"] == [2, 4]
    assert report["extra_ids"] == [99, 100, 101]
    assert report["num_scored"] == 2
    assert report["overall"] == round(100 * (1.0 + 0.6) / 2, 2)
    assert report["overall_missing_as_wrong"] == round(100 * (1.0 + 0.6) / 4, 2)
    assert "2 of 4 questions have no prediction" in caplog.text
    assert "3 predictions have an id that is not in the question set" in caplog.text


def test_evaluate_results_strict_raises_on_mismatch():
    with pytest.raises(ValueError, match="1 of 4 questions have no prediction"):
        evaluate_results({1: "yes", 2: "2", 3: "red"}, make_records(), single_answer=False, strict=True)


def test_evaluate_results_counts_repeated_ids_once():
    results = [{"question_id": 1, "answer": "no"}, {"question_id": 1, "answer": "yes"}]
    records = make_records()[:1]
    report = evaluate_results(results, records, single_answer=False)
    assert report["repeated"] == 1
    assert report["num_scored"] == 1
    assert report["overall"] == 100.0


def test_evaluate_results_matches_string_and_int_ids():
    records = [QuestionRecord("7", "a.png", "q", ["circle"], "shape")]
    report = evaluate_results([{"question_id": 7, "answer": "Circle"}], records, single_answer=True)
    assert report["missing"] == 0
    assert report["overall"] == 100.0


def test_evaluate_results_groups():
    records = [
        QuestionRecord(1, "a.png", "q", ["circle"], "rel_closest"),
        QuestionRecord(2, "a.png", "q", ["yes"], "nonrel_left"),
    ]
    report = evaluate_results(
        {1: "circle", 2: "no"}, records, single_answer=True,
        group_of=lambda t: "relational" if t.startswith("rel_") else "non-relational",
    )
    assert report["per_group"] == {"relational": 100.0, "non-relational": 0.0}


def test_results_file_round_trip(tmp_path):
    path = tmp_path / "out" / "results.json"
    write_results(path, {1: "yes", 2: "two"})
    assert json.loads(path.read_text()) == [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "two"}]
    assert load_results(path) == [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "two"}]


def test_load_results_rejects_bad_entries(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"question_id": 1}]))
    with pytest.raises(ValueError, match="entry 0"):
        load_results(path)
    path.write_text(json.dumps({"question_id": 1, "answer": "x"}))
    with pytest.raises(ValueError, match="JSON list"):
        load_results(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_results(tmp_path / "missing.json")
