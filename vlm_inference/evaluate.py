"""Stage 6: score predictions against their references, by question type.

    python vlm_inference/evaluate.py --predictions predictions.jsonl --output_file metrics.json \\
        [--baseline base_predictions.jsonl] [--report report.md]

Reads the ``predictions.jsonl`` that ``predict.py`` writes (one JSON object a line: ``id``,
``turn``, ``question``, ``answer``, ``reference``, ``type``) and writes ``metrics.json``
(overall and per type, with counts) and ``report.md`` (a markdown table; by default beside
``metrics.json``), and prints the table. With ``--baseline`` both models are scored and the
difference (model - baseline) is reported. Metrics: see ``vlm_core/scoring.py``; ``grounding``: the share of
grounding answers with no box or a box outside the image, per family (``vlm_core/frame_check.py``), warned
about on stderr above 5%. The report is written
first, then ``metrics.json`` naming its SHA-256 (``"report"``), each atomically: a run killed between the two
leaves a pair that ``vlm_core.io_utils.report_is_current`` tells apart, and the same command mends it.

The files are read a line at a time and each answer is scored once; what is kept is running
sums, the region descriptions' token ids and CIDEr-D's n-gram document frequencies (counts),
and 8 bytes a record for the duplicate check (16 with ``--baseline``), so millions of lines fit
in a few hundred MiB.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: its folder's vlm_inference.py would shadow the vlm_inference package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from vlm_core.frame_check import FrameCheck, read_frame_fields
from vlm_core.io_utils import InputError, iter_jsonl, write_results_with_report
from vlm_core.llava_format import is_llava_file
from vlm_core.predictions import check_prediction
from vlm_core.runtime import plural, report_input_errors, require_output_file, require_path
from vlm_core.schema import GROUNDING_TYPES
from vlm_core.scoring import UNTYPED, PredictionScorer, difference, is_count_key

# Which count a pooled overall metric is taken over.
_OVERALL_N = {"accuracy": "n_short_answer", "count_exact": "n_count", "count_mae": "n_count",
              "acc@0.5": "n_grounding", "mean_iou": "n_grounding", "bleu4": "n_region_description",
              "rougeL": "n_region_description", "cider": "n_region_description"}
_LEGEND = (
    "accuracy: exact match after the VQAv2 answer normalisation; count_exact: first number in the "
    "answer equals the reference's; count_mae: mean absolute error of those numbers; acc@0.5: share "
    "of grounding answers whose box has IoU >= 0.5 with the reference box (no box = miss); mean_iou: "
    "their mean IoU; bleu1-4, rougeL, cider: coco-caption BLEU, ROUGE-L and CIDEr-D of the region "
    "descriptions; no_box / count_no_number: answers with no box / no number.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="predictions.jsonl written by predict.py")
    p.add_argument("--output_file", default="metrics.json", help="where to write the metrics (JSON)")
    p.add_argument("--baseline", default=None,
                   help="predictions.jsonl of another model (e.g. the base model) to compare against")
    p.add_argument("--report", default=None, help="where to write the markdown report (default: report.md "
                                                  "beside --output_file)")
    args = p.parse_args(argv)
    if args.report is None:
        args.report = str(Path(args.output_file).parent / "report.md")
    # The paths stay as given: metrics.json and the report name the files as the user wrote them.
    inputs = {"--predictions": require_path(args.predictions, "--predictions", "file")}
    if args.baseline is not None:
        inputs["--baseline"] = require_path(args.baseline, "--baseline", "file")
    for flag, path in inputs.items():
        if is_llava_file(path):
            raise InputError(f"{flag}: {path} is a LLaVA conversation file (the questions), not predictions; "
                             "predict.py writes the predictions evaluate.py scores: python vlm_inference/predict.py "
                             f"--model_path MODEL --data {path} --image_dir IMAGES --output_file predictions.jsonl")
    out = require_output_file(args.output_file, "--output_file", inputs)
    report = require_output_file(args.report, "--report", inputs)
    if out.resolve() == report.resolve():
        raise InputError(f"--report: {report} is the same file as --output_file")
    return args


def _question_key(rec: dict) -> int:
    """A 64-bit hash of (id, turn, question): what makes two files' records the same question."""
    question = rec.get("question")
    if not isinstance(question, (str, type(None))):
        question = json.dumps(question, sort_keys=True)
    return hash((rec.get("id"), rec.get("turn", 0), question))


@dataclass
class ScoredFile:
    """What one pass over a predictions file keeps: running scores, counts and 8-byte keys."""
    path: str
    result: dict
    n: int
    untyped: bool
    question_keys: np.ndarray | None      # unique hashes of (id, turn, question), when asked for
    frames: FrameCheck | None = None      # where the grounding answers fall (vlm_core/frame_check.py)


def score_file(path: str | os.PathLike, question_keys: bool = False) -> ScoredFile:
    """Check and score a predictions file in one streaming pass; errors name the file and line.

    Memory: the scores' running sums, the region descriptions' token ids for CIDEr-D, and
    8 bytes a record for the duplicate check (and 8 more with ``question_keys``).
    """
    scorer = PredictionScorer()
    id_keys = array("q")                  # hash((id, turn)) of each record with an id
    qkeys = array("q") if question_keys else None
    untyped = False
    frames = FrameCheck()
    for line_no, rec in iter_jsonl(path, skip_partial_last=False):
        check_prediction(rec, f"{path}: line {line_no}")
        if rec.get("type") in GROUNDING_TYPES:
            try:  # predict.py records the frame and image size; other tools' lines count "no box" only
                frames.add(rec["answer"], *read_frame_fields(rec, f"{path}: line {line_no}"))
            except ValueError as e:
                raise InputError(str(e)) from None
        if "id" in rec:
            id_keys.append(hash((rec["id"], rec.get("turn", 0))))
        if qkeys is not None:
            qkeys.append(_question_key(rec))
        qtype = rec.get("type")
        untyped = untyped or (qtype or UNTYPED) == UNTYPED
        scorer.add(rec["answer"], rec["reference"], qtype)
    if not scorer.n:
        raise InputError(f"{path}: no predictions in the file")
    _check_duplicates(path, id_keys)
    keys = np.unique(np.frombuffer(qkeys, dtype=np.int64)) if qkeys is not None else None
    return ScoredFile(str(path), scorer.result(), scorer.n, untyped, keys, frames)


def _check_duplicates(path, id_keys: array) -> None:
    """Refuse a second record of the same (id, turn), naming both lines.

    Only hashes are kept while scoring; when two are equal the file is read again to find
    (and confirm) the pair, so a hash collision can never refuse a good file.
    """
    keys = np.sort(np.frombuffer(id_keys, dtype=np.int64))
    repeated = set(keys[1:][keys[1:] == keys[:-1]].tolist())
    if not repeated:
        return
    first: dict = {}
    for line_no, rec in iter_jsonl(path, skip_partial_last=False):
        if "id" not in rec:
            continue
        key = (rec["id"], rec.get("turn", 0))
        if hash(key) in repeated:
            if key in first:
                raise InputError(f"{path}: line {line_no}: id {key[0]!r} turn {key[1]} is already scored "
                                 f"at line {first[key]}")
            first[key] = line_no


def _fmt(value, count: bool = False) -> str:
    if value is None:
        return "–"
    if count:
        return str(int(value))
    return f"{value:.3f}"


def _rows(result: dict) -> list[tuple[str, str, str, object]]:
    """(type, n, metric, value) rows: the pooled overall metrics first, then each type."""
    rows = []
    for key, value in result["overall"].items():
        if not is_count_key(key):
            rows.append(("overall", str(result["overall"].get(_OVERALL_N.get(key, "n"), "")), key, value))
    for qtype, m in result["per_type"].items():
        for key, value in m.items():
            if key != "n":
                rows.append((qtype, str(m["n"]), key, value))
    return rows


def render_table(result: dict, baseline: dict | None = None) -> str:
    """A markdown table of the metrics (and the baseline and difference when given)."""
    header = ["type", "n", "metric", "model"] + (["baseline", "Δ"] if baseline else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    base_rows = {(t, k): v for t, _, k, v in _rows(baseline)} if baseline else {}
    for qtype, n, key, value in _rows(result):
        count = key in ("count_no_number", "no_box")
        cells = [qtype, n, key, _fmt(value, count)]
        if baseline:
            other = base_rows.get((qtype, key))
            delta = (value - other) if isinstance(value, (int, float)) and isinstance(other, (int, float)) else None
            cells += [_fmt(other, count), "–" if delta is None else (f"{delta:+d}" if count else f"{delta:+.3f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@report_input_errors
def main(argv=None) -> int:
    return _main(argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    out, report_path = Path(args.output_file), Path(args.report)
    scored = score_file(args.predictions, question_keys=bool(args.baseline))
    base = score_file(args.baseline, question_keys=True) if args.baseline else None

    result = {"predictions": str(args.predictions), **scored.result}
    if scored.frames.counts:  # the share of grounding answers with no box or outside the image, per family
        result["grounding"] = scored.frames.result()
    notes = []
    if scored.untyped:
        notes.append("some predictions carry no type: they are scored as short answers under 'untyped'")
    described = result["overall"].get("n_region_description")
    if described == 1:
        notes.append("CIDEr needs at least 2 region descriptions (its idf is taken over the "
                     "evaluated references): not reported")
    baseline = None
    if base is not None:
        baseline = {"predictions": str(args.baseline), **base.result}
        result["baseline"] = baseline
        result["difference"] = difference(result, baseline)
        common = int(np.intersect1d(scored.question_keys, base.question_keys, assume_unique=True).size)
        result["common_questions"] = common
        if common != scored.n or common != base.n:
            notes.append(f"the two files share {common} questions (model {scored.n}, baseline "
                         f"{base.n}): the comparison is not over the same questions")
    if notes:
        result["notes"] = notes

    table = render_table(result, baseline)
    title = f"Predictions: `{args.predictions}` ({plural(scored.n, 'answer')})"
    if baseline:
        title += f"  \nBaseline: `{args.baseline}` ({plural(base.n, 'answer')}); Δ = model - baseline"
    report = "\n\n".join(["# Evaluation report", title, table, *(f"Note: {n}" for n in notes),
                          f"Metrics: {_LEGEND}"]) + "\n"
    write_results_with_report(out, result, report_path, report)

    print(table)
    for note in notes:
        print(f"note: {note}")
    if scored.frames.counts:
        print(scored.frames.summary())
    for line in scored.frames.warnings("evaluate"):
        print(line, file=sys.stderr)
    print(f"scored {plural(scored.n, 'answer')} in {plural(len(result['per_type']), 'question type')} -> {out}, "
          f"{report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
