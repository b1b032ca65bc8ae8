"""Stage 6: evaluate.py on hand-written predictions files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlm_core.io_utils import report_is_current
from vlm_inference import evaluate

REPO = Path(__file__).resolve().parents[1]

REF_BOX = "[0.00, 0.00, 1.00, 1.00]"


def _pred(i, qtype, answer, reference, turn=0):
    return {"id": f"img{i}.jpg#0", "image": f"img{i}.jpg", "turn": turn, "question": f"q{i}-{turn}",
            "answer": answer, "reference": reference, "type": qtype}


def _model_preds():
    return [
        _pred(0, "count", "There are two objects in this image.", "There are 2 objects in this image."),
        _pred(0, "exists", "Yes.", "yes", turn=1),
        _pred(1, "grounding", "[0.00, 0.00, 0.51, 1.00]", REF_BOX),
        _pred(2, "grounding", "[0.00, 0.00, 0.49, 1.00]", REF_BOX),
        _pred(3, "region_description", "a cat", "a cat"),
        _pred(4, "region_description", "a dog", "a bird"),
    ]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_writes_metrics_and_report(tmp_path, capsys):
    preds = _write(tmp_path / "predictions.jsonl", _model_preds())
    out = tmp_path / "eval" / "metrics.json"
    assert evaluate.main(["--predictions", str(preds), "--output_file", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["overall"]["n"] == 6
    assert metrics["per_type"]["count"]["accuracy"] == 1.0 and metrics["per_type"]["count"]["count_exact"] == 1.0
    g = metrics["per_type"]["grounding"]
    assert (g["n"], g["acc@0.5"], g["mean_iou"]) == (2, 0.5, pytest.approx(0.5))
    assert metrics["per_type"]["region_description"]["cider"] == pytest.approx(2.5)
    report = (tmp_path / "eval" / "report.md").read_text()          # default: beside metrics.json
    assert "| grounding | 2 | acc@0.5 | 0.500 |" in report
    assert "| overall | 3 | accuracy | 1.000 |" not in report       # accuracy pools the 2 short answers
    assert "| overall | 2 | accuracy | 1.000 |" in report
    printed = capsys.readouterr().out
    assert "| type | n | metric | model |" in printed and "scored 6 answers in 4 question types" in printed


def test_baseline_comparison(tmp_path):
    base = _model_preds()
    base[2] = _pred(1, "grounding", "no idea", REF_BOX)              # model hits, baseline misses
    base[0] = _pred(0, "count", "There are 3 objects in this image.", "There are 2 objects in this image.")
    preds = _write(tmp_path / "p.jsonl", _model_preds())
    basef = _write(tmp_path / "b.jsonl", base)
    out = tmp_path / "m.json"
    report = tmp_path / "r.md"
    assert evaluate.main(["--predictions", str(preds), "--baseline", str(basef), "--output_file", str(out),
                          "--report", str(report)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["baseline"]["per_type"]["grounding"]["no_box"] == 1
    assert metrics["difference"]["per_type"]["grounding"]["acc@0.5"] == pytest.approx(0.5)
    assert metrics["difference"]["per_type"]["count"]["count_exact"] == pytest.approx(1.0)
    assert metrics["common_questions"] == 6 and "notes" not in metrics
    text = report.read_text()
    assert "| type | n | metric | model | baseline | Δ |" in text
    assert "| grounding | 2 | acc@0.5 | 0.500 | 0.000 | +0.500 |" in text
    assert "| grounding | 2 | no_box | 0 | 1 | -1 |" in text


@pytest.mark.parametrize("content, message", [
    ("", "no predictions in the file"),
    ("\n\n", "no predictions in the file"),
    ('{"answer": "a", "reference": "b", "type": "count"}\n{"answer": "a", "refer\n', "line 2: invalid JSON"),
    ('{"answer": "a", "reference": "b", "type": "count"}\n{"answer": "a", "refer', "line 2: invalid JSON"),
    ('[1, 2]\n', "line 1: expected a JSON object"),
    ('{"reference": "b", "type": "count"}\n', "line 1: answer: missing"),
    ('{"answer": 3, "reference": "b", "type": "count"}\n', "line 1: answer: expected a string"),
    ('{"answer": "a", "reference": "b", "type": 5}\n', "line 1: type"),
    ('{"answer": "a", "reference": "left", "type": "grounding"}\n', "line 1: reference: a grounding reference"),
    ('{"id": "x#0", "turn": 0, "answer": "a", "reference": "b", "type": "count"}\n'
     '{"id": "x#0", "turn": 0, "answer": "a", "reference": "b", "type": "count"}\n', "line 2: id 'x#0' turn 0"),
])
def test_bad_predictions_exit_2_and_write_nothing(tmp_path, capsys, content, message):
    preds = tmp_path / "predictions.jsonl"
    preds.write_text(content)
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--predictions", str(preds), "--output_file", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(preds) in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "report.md").exists()


def test_missing_files_and_bad_outputs_exit_2(tmp_path, capsys):
    preds = _write(tmp_path / "p.jsonl", _model_preds())
    assert evaluate.main(["--predictions", str(tmp_path / "nope.jsonl"),
                          "--output_file", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "--predictions: file not found" in err and "nope.jsonl" in err
    assert evaluate.main(["--predictions", str(preds), "--baseline", str(tmp_path / "b.jsonl"),
                          "--output_file", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "--baseline: file not found" in err and "b.jsonl" in err
    assert evaluate.main(["--predictions", str(preds), "--output_file", str(preds)]) == 2
    assert "--output_file" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_streamed_scores_equal_the_list_api(tmp_path):
    """score_file (one pass, running sums) gives what score_predictions gives on the loaded list."""
    from vlm_inference.metrics import score_predictions
    records = _model_preds() + [_pred(5, None, "Blue!", "blue"), _pred(6, "count_class", "2.5 cans", "3 cans"),
                                _pred(7, "region_description", "a red can (small)", "the cat's red can")]
    path = _write(tmp_path / "p.jsonl", records)
    scored = evaluate.score_file(path)
    assert scored.result == score_predictions(records)
    assert scored.n == 9 and scored.untyped and scored.question_keys is None
    assert scored.result["per_type"]["count_class"] == {"n": 1, "accuracy": 0.0, "count_exact": 0.0,
                                                        "count_mae": 0.5, "count_no_number": 0}


def test_duplicate_far_apart_names_both_lines(tmp_path, capsys):
    records = [_pred(i, "exists", "yes", "yes") for i in range(50)] + [_pred(7, "exists", "no", "yes")]
    preds = _write(tmp_path / "p.jsonl", records)
    assert evaluate.main(["--predictions", str(preds), "--output_file", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "line 51: id 'img7.jpg#0' turn 0 is already scored at line 8" in err
    # same id, other turn: not a duplicate
    records[-1] = _pred(7, "exists", "no", "yes", turn=1)
    _write(preds, records)
    assert evaluate.main(["--predictions", str(preds), "--output_file", str(tmp_path / "m.json")]) == 0


def test_baseline_over_other_questions_is_noted(tmp_path):
    base = _model_preds()[:5] + [_pred(9, "exists", "yes", "yes")]   # 5 shared, 1 other
    preds = _write(tmp_path / "p.jsonl", _model_preds())
    basef = _write(tmp_path / "b.jsonl", base)
    out = tmp_path / "m.json"
    assert evaluate.main(["--predictions", str(preds), "--baseline", str(basef), "--output_file", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["common_questions"] == 5
    assert metrics["notes"] == ["the two files share 5 questions (model 6, baseline 6): the comparison is not "
                                "over the same questions"]


def test_memory_does_not_grow_with_lines(tmp_path):
    """Scoring keeps running sums and 8 bytes a record: 20k lines peak within 1 MiB of 2k lines'."""
    import tracemalloc

    from vlm_inference.metrics import normalize_answer

    def peak(n):
        kinds = [("exists", "Yes.", "yes"), ("count", "There are 2 cans.", "There are 3 cans in this image."),
                 ("grounding", "[0.00, 0.00, 0.51, 1.00]", REF_BOX), ("region_label", "can", "bottle")]
        path = _write(tmp_path / f"p{n}.jsonl", [_pred(i, *kinds[i % 4]) for i in range(n)])
        normalize_answer.cache_clear()
        tracemalloc.start()
        evaluate.score_file(path)
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top
    small, big = peak(2000), peak(20000)
    assert big - small < 1024 * 1024, (small, big)


def test_runs_as_a_file(tmp_path):
    """``python vlm_inference/evaluate.py`` (the documented command): its folder's vlm_inference.py must not
    shadow the package."""
    import subprocess
    import sys
    from pathlib import Path
    preds = _write(tmp_path / "p.jsonl", _model_preds())
    script = Path(evaluate.__file__)
    done = subprocess.run([sys.executable, str(script), "--predictions", str(preds), "--output_file",
                           str(tmp_path / "m.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "scored 6 answers in 4 question types" in done.stdout


HOLD_RUNNER = """
import os, sys, time
from vlm_core import io_utils
from vlm_inference import evaluate

def hold(*args, **kwargs):
    open(os.environ["HOLD_FLAG"], "w").close()
    time.sleep(120)
io_utils.write_json_atomic = hold   # metrics.json, written after report.md
sys.exit(evaluate.main(sys.argv[1:]))
"""


def test_a_kill_between_report_and_metrics_is_visible_and_a_rerun_mends_it(tmp_path):
    """metrics.json and report.md were written separately: a kill between them left a new metrics.json beside
    an old report.md (issue 28). Now the report comes first and metrics.json names its hash."""
    preds, out = tmp_path / "predictions.jsonl", tmp_path / "metrics.json"
    argv = ["--predictions", str(preds), "--output_file", str(out)]
    _write(preds, _model_preds())
    assert evaluate.main(argv) == 0 and report_is_current(out)
    old_json, old_md = out.read_text(), (tmp_path / "report.md").read_text()
    assert json.loads(old_json)["report"]["file"] == "report.md"
    _write(preds, _model_preds()[:3])
    flag = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_RUNNER, *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, HOLD_FLAG=str(flag)))
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert out.read_text() == old_json and (tmp_path / "report.md").read_text() != old_md
    assert not report_is_current(out)
    assert evaluate.main(argv) == 0 and report_is_current(out)
    assert json.loads(out.read_text())["overall"]["n"] == 3


def test_a_closed_stdout_is_no_traceback(tmp_path):
    """`evaluate.py ... | head` gave a BrokenPipe traceback after writing (issue 28)."""
    preds, out = _write(tmp_path / "predictions.jsonl", _model_preds()), tmp_path / "metrics.json"
    proc = subprocess.Popen([sys.executable, "vlm_inference/evaluate.py", "--predictions", str(preds),
                             "--output_file", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 0, err
    assert "Traceback" not in err and report_is_current(out)

