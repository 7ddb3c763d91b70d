"""Official VQA accuracy, exact-match accuracy and results-file evaluation.

``normalize_answer`` and ``vqa_accuracy`` reproduce the behaviour of the
official evaluation script, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
in GT-Vision-Lab/VQA, in its later revision. Earlier revisions always
processed the prediction and applied only the punctuation step to the human
answers. The later revision does this:

- Tabs and newlines become spaces and both ends are stripped, in the
  prediction and in every human answer.
- Punctuation and digit/article processing runs on the prediction and on the
  human answers only when the stripped human answers are not all identical.
  When all ten annotators typed the same string, the prediction must equal
  that string after stripping, so ``"Two"`` scores 0 against ten ``"two"``.
- The score is the mean over the leave-one-out subsets of the human answers of
  ``min(1, matches / 3)``, computed with the same float operations in the same
  order, so the result is bit-identical to the official script run on the same
  Python version. The order matters: the builtin ``sum`` of floats is plain
  left-to-right addition up to Python 3.11 and Neumaier-compensated from 3.12
  on (python/cpython issue 100425), so
  "no" against 8 "yes" followed by 2 "no" scores 0.5999999999999999 on 3.11
  (the exactly rounded sum, ``math.fsum``, gives 0.6).

Per-question scores are fractions in [0, 1]. ``evaluate_results`` reports
percentages in [0, 100] rounded like the official script (2 decimals by
default, ``decimals=None`` keeps full precision).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

__all__ = [
    "normalize_answer",
    "vqa_accuracy",
    "vqa_accuracy_table",
    "exact_match",
    "score",
    "evaluate_results",
    "load_results",
    "write_results",
]

logger = logging.getLogger(__name__)

QuestionId = Union[int, str]

# Tables of the official script. Keys that contain capitals ("Im", "Id've")
# never match because the script lower-cases before this lookup, but they are
# kept so the table reads the same as the original.
_CONTRACTIONS = dict(
    pair.split(" ", 1)
    for pair in """\
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've|\
couldnt've couldn't've|didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've|\
hadn'tve hadn't've|hasnt hasn't|havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's|\
howd how'd|howll how'll|hows how's|Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd|\
itd've it'd've|it'dve it'd've|itll it'll|let's let's|maam ma'am|mightnt mightn't|\
mightnt've mightn't've|mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve must've|\
neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at|\
'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's|shouldve should've|\
shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd|\
somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's|\
someoned someone'd|someoned've someone'd've|someone'dve someone'd've|someonell someone'll|\
someones someone's|somethingd something'd|somethingd've something'd've|\
something'dve something'd've|somethingll something'll|thats that's|thered there'd|\
thered've there'd've|there'dve there'd've|therere there're|theres there's|theyd they'd|\
theyd've they'd've|they'dve they'd've|theyll they'll|theyre they're|theyve they've|twas 'twas|\
wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've|werent weren't|whatll what'll|\
whatre what're|whats what's|whatve what've|whens when's|whered where'd|wheres where's|\
whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|whos who's|\
whove who've|whyll why'll|whyre why're|whys why's|wont won't|wouldve would've|\
wouldnt wouldn't|wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll|\
y'allll y'all'll|yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|\
youd've you'd've|you'dve you'd've|youll you'll|youre you're|youve you've""".split("|")
)
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                ">", "<", "@", "`", ",", "?", "!")
# The official pattern starts with "(?!<=\d)", a lookahead that is always true
# here, so it removes every "." that is not followed by a digit.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# The official script passes re.UNICODE (= 32) as the positional ``count``
# argument of ``Pattern.sub``, so at most 32 periods are removed.
_MAX_PERIODS_REMOVED = int(re.UNICODE)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    # A mark is deleted when it touches a space or when the text contains a
    # digit-comma-digit anywhere, and becomes a space otherwise. Both tests look
    # at the input text, not at the partly processed one.
    delete_marks = _DIGIT_COMMA_DIGIT.search(text) is not None
    output = text
    for mark in _PUNCTUATION:
        if delete_marks or (mark + " ") in text or (" " + mark) in text:
            output = output.replace(mark, "")
        else:
            output = output.replace(mark, " ")
    return _PERIOD.sub("", output, count=_MAX_PERIODS_REMOVED)


def _process_digits_and_articles(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Apply the official answer processing: whitespace, punctuation, number words, articles, contractions.

    ``vqa_accuracy`` applies this only when the human answers disagree; the
    answer vocabulary and exact-match accuracy always apply it.

    Args:
        text: A predicted or human answer.

    Returns:
        The processed answer, lower-case, with single spaces.
    """
    return _process_digits_and_articles(_process_punctuation(_clean_whitespace(text)))


def _leave_one_out_accuracy(answer: str, processed_human_answers: Sequence[str]) -> float:
    # One subset per human answer, each without that answer. The same float
    # operations as the official loop keep the result bit-identical.
    subset_scores = []
    for left_out in range(len(processed_human_answers)):
        matches = sum(
            1 for i, human in enumerate(processed_human_answers) if i != left_out and human == answer
        )
        subset_scores.append(min(1, float(matches) / 3))
    return float(sum(subset_scores)) / len(subset_scores)


def _process_for_scoring(human_answers: Sequence[str]) -> tuple[list[str], bool]:
    """Return the human answers as the official script compares them, and whether they were normalized."""
    if len(human_answers) < 2:
        raise ValueError(
            f"vqa_accuracy needs at least 2 human answers, got {len(human_answers)}: "
            f"{list(human_answers)!r}. Use exact_match (or score(..., single_answer=True)) "
            "for single-answer data sets."
        )
    cleaned = [_clean_whitespace(answer) for answer in human_answers]
    if len(set(cleaned)) > 1:
        return [_process_digits_and_articles(_process_punctuation(a)) for a in cleaned], True
    return cleaned, False


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Compute the official VQA accuracy of one prediction against the human answers.

    Args:
        prediction: The predicted answer string.
        human_answers: The raw human answers with repeats, in annotation order
            (10 for VQA v2).

    Returns:
        A fraction in [0, 1]: 1, 2 or 3+ matching annotators out of 10 give
        0.30000000000000004, 0.6 and 1.0 (0.9 for exactly 3 of 10).

    Raises:
        ValueError: If fewer than 2 human answers are given, because the
            leave-one-out average is then always 0.
    """
    processed, normalized = _process_for_scoring(human_answers)
    answer = _clean_whitespace(prediction)
    if normalized:
        answer = _process_digits_and_articles(_process_punctuation(answer))
    return _leave_one_out_accuracy(answer, processed)


def vqa_accuracy_table(human_answers: Sequence[str]) -> dict[str, float]:
    """Map every answer that scores above 0 to its ``vqa_accuracy``, for soft targets.

    Args:
        human_answers: The raw human answers with repeats (at least 2).

    Returns:
        ``{answer: accuracy}`` where each key is written as a prediction must
        read after the official processing: normalized when the human answers
        disagree, whitespace-stripped otherwise.
    """
    processed, _ = _process_for_scoring(human_answers)
    return {answer: _leave_one_out_accuracy(answer, processed) for answer in dict.fromkeys(processed)}


def exact_match(prediction: str, answer: str) -> float:
    """Return 1.0 when both answers are equal after ``normalize_answer``, else 0.0.

    Args:
        prediction: The predicted answer.
        answer: The single ground-truth answer.
    """
    return 1.0 if normalize_answer(prediction) == normalize_answer(answer) else 0.0


def score(prediction: str, human_answers: Sequence[str], single_answer: bool) -> float:
    """Score one prediction with the metric of its data set.

    Args:
        prediction: The predicted answer.
        human_answers: The ground-truth answers of the question.
        single_answer: True for data sets with one answer per question (GQA,
            CLEVR, easy-VQA, Sort-of-CLEVR): exact match after normalization.
            False for VQA v2: the official soft accuracy.

    Returns:
        A fraction in [0, 1].

    Raises:
        ValueError: If ``single_answer`` is set and there is not exactly one answer.
    """
    if single_answer:
        if len(human_answers) != 1:
            raise ValueError(
                f"single_answer=True expects exactly one ground-truth answer, got "
                f"{len(human_answers)}: {list(human_answers)!r}"
            )
        return exact_match(prediction, human_answers[0])
    return vqa_accuracy(prediction, human_answers)


def _percent(values: Sequence[float], decimals: Optional[int]) -> float:
    # Same expression as the official setAccuracy: round(100 * sum / n, n_decimals).
    value = 100 * float(sum(values)) / len(values)
    return value if decimals is None else round(value, decimals)


def _results_by_id(results: Union[Mapping[QuestionId, str], Iterable[Mapping[str, Any]]]) -> tuple[dict, int]:
    """Return ``{str(question_id): (question_id, answer)}`` and the number of repeated ids."""
    if isinstance(results, Mapping):
        return {str(qid): (qid, answer) for qid, answer in results.items()}, 0
    by_id: dict[str, tuple[QuestionId, str]] = {}
    repeats = 0
    for entry in results:
        key = str(entry["question_id"])
        repeats += key in by_id
        # Like the official loader, the last entry for an id wins.
        by_id[key] = (entry["question_id"], entry["answer"])
    return by_id, repeats


def evaluate_results(
    results: Union[Mapping[QuestionId, str], Iterable[Mapping[str, Any]]],
    records: Sequence[Any],
    single_answer: bool,
    *,
    strict: bool = False,
    decimals: Optional[int] = 2,
    group_of: Optional[Callable[[str], Optional[str]]] = None,
) -> dict[str, Any]:
    """Score predictions against a question set, overall and per answer type.

    Ids are matched by ``str(question_id)``, so ``7`` and ``"7"`` are the same
    question. Only questions that have a prediction are scored; missing and
    extra ids are counted, listed and logged as a warning, never dropped
    silently. ``overall_missing_as_wrong`` scores missing questions as 0.
    The official script instead rejects any mismatch; ``strict=True`` does that.

    Args:
        results: ``[{"question_id": ..., "answer": ...}]`` (the official
            results format) or a mapping from question id to answer.
        records: The questions, objects with ``question_id``, ``answers`` and
            ``answer_type`` (``vqa.data.QuestionRecord``).
        single_answer: Use exact match (True) or the official soft accuracy (False).
        strict: Raise ``ValueError`` when ids are missing, extra or repeated.
        decimals: Rounding of the percentages; None keeps full precision.
        group_of: Optional map from answer type to a coarser group (for
            example relational / non-relational), reported as ``per_group``.

    Returns:
        A dict with ``overall``, ``overall_missing_as_wrong``,
        ``per_answer_type`` and ``per_group`` (percentages), ``num_questions``,
        ``num_results``, ``num_scored``, ``missing``, ``extra``, ``repeated``
        (counts), and ``missing_ids`` / ``extra_ids`` (lists, in record and
        results order).

    Raises:
        ValueError: If ``strict`` is set and the ids do not match, or a record
            to score has no ground-truth answer.
    """
    predictions, repeated = _results_by_id(results)
    record_keys = {str(record.question_id) for record in records}
    missing_ids = [r.question_id for r in records if str(r.question_id) not in predictions]
    extra_ids = [qid for key, (qid, _) in predictions.items() if key not in record_keys]

    if missing_ids or extra_ids or repeated:
        message = (
            f"results do not match the question set: {len(missing_ids)} of {len(records)} "
            f"questions have no prediction, {len(extra_ids)} predictions have an id that is "
            f"not in the question set, {repeated} ids are repeated (the last answer is used). "
            f"First missing ids: {missing_ids[:5]}, first extra ids: {extra_ids[:5]}."
        )
        if strict:
            raise ValueError(message)
        logger.warning("%s Scoring the %d matched questions only.", message, len(records) - len(missing_ids))

    scores: list[float] = []
    per_type: dict[str, list[float]] = {}
    per_group: dict[str, list[float]] = {}
    for record in records:
        key = str(record.question_id)
        if key not in predictions:
            continue
        if not record.answers:
            raise ValueError(
                f"question {record.question_id!r} has no ground-truth answer; test splits "
                "without answers cannot be scored locally."
            )
        value = score(predictions[key][1], record.answers, single_answer)
        scores.append(value)
        if record.answer_type is not None:
            per_type.setdefault(record.answer_type, []).append(value)
            group = group_of(record.answer_type) if group_of is not None else None
            if group is not None:
                per_group.setdefault(group, []).append(value)

    num_questions = len(records)
    return {
        "overall": _percent(scores, decimals) if scores else float("nan"),
        "overall_missing_as_wrong": (
            _percent(scores + [0.0] * len(missing_ids), decimals) if num_questions else float("nan")
        ),
        "per_answer_type": {name: _percent(values, decimals) for name, values in per_type.items()},
        "per_group": {name: _percent(values, decimals) for name, values in per_group.items()},
        "num_questions": num_questions,
        "num_results": len(predictions) + repeated,
        "num_scored": len(scores),
        "missing": len(missing_ids),
        "extra": len(extra_ids),
        "repeated": repeated,
        "missing_ids": missing_ids,
        "extra_ids": extra_ids,
    }


def load_results(path: Union[str, Path]) -> list[dict[str, Any]]:
    """Read a results file in the official format ``[{"question_id": ..., "answer": ...}]``.

    Args:
        path: The JSON file.

    Returns:
        The entries, each with ``question_id`` and ``answer`` (a string).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the JSON is not a list of such objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        entries = json.load(handle)
    if not isinstance(entries, list):
        raise ValueError(
            f"{path}: expected a JSON list of {{\"question_id\": ..., \"answer\": ...}} objects, "
            f"got a {type(entries).__name__}"
        )
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or "question_id" not in entry or "answer" not in entry:
            raise ValueError(
                f"{path}: entry {position} is {entry!r}; every entry needs \"question_id\" and \"answer\""
            )
        if not isinstance(entry["answer"], str):
            raise ValueError(f"{path}: entry {position} has a non-string answer {entry['answer']!r}")
    return entries


def write_results(
    path: Union[str, Path],
    results: Union[Mapping[QuestionId, str], Iterable[Mapping[str, Any]]],
) -> None:
    """Write predictions in the official results format.

    Args:
        path: Output JSON file; parent folders are created.
        results: A mapping from question id to answer, or an iterable of
            ``{"question_id": ..., "answer": ...}`` dicts.
    """
    if isinstance(results, Mapping):
        entries = [{"question_id": qid, "answer": answer} for qid, answer in results.items()]
    else:
        entries = [{"question_id": e["question_id"], "answer": e["answer"]} for e in results]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        json.dump(entries, handle)
