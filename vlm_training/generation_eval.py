"""Generation-based evaluation inside the Trainer (``train_vlm.py --eval_generate``): at every evaluation the
model answers a fixed sample of ``--val_data`` questions, and the answers are scored per question type.

- The sample (:func:`draw_samples`) is drawn once, seeded and stratified by question type: every type gets an
  equal share of ``--eval_generate_samples`` (a type with fewer questions gives all it has, the rest goes to the
  others), kept in file order. Its ``(id, turn)`` list is saved in the output folder and in every checkpoint
  (:data:`SAMPLES_FILE`), so a resumed run asks the same questions (:func:`sample_questions`).
- Questions are asked exactly as ``predict.py`` asks them (:mod:`vlm_core.generation`: the family's prompt, the
  record's visual box prompts drawn, the box frame's image, greedy decoding, ``--max_new_tokens``) and scored by evaluate.py's scorer
  (:mod:`vlm_core.scoring`), so the numbers equal ``predict.py`` + ``evaluate.py`` on the checkpoint.
- Under torchrun every rank answers a contiguous share; the answers are gathered once, scored on rank 0 and the
  metrics broadcast, so every rank takes the same best-model and early-stopping decisions.
- Metrics are named ``eval_<type>_<metric>`` (``eval_grounding_acc50``, ``eval_count_count_exact``), plus
  ``eval_unparsed_boxes`` (the share of grounding answers without a box), ``eval_generate_seconds`` and
  ``eval_generate_samples``. The answers of the latest evaluation are written to :data:`PREDICTIONS_FILE` in
  predict.py's format (``evaluate.py --predictions`` reads it).
"""
from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

from vlm_core import families
from vlm_core.generation import generate_answers, generation_processor, greedy_settings, pad_fill, record_questions
from vlm_core.images import ImageLoadError, load_image
from vlm_core.io_utils import InputError, dumps_line, write_json_atomic, write_text_atomic
from vlm_core.llava_format import iter_llava_records, resolve_image_path
from vlm_core.predictions import prediction_record
from vlm_core.prompts import PromptFormat
from vlm_core.schema import COUNT_TYPES, DESCRIPTION_TYPES, GROUNDING_TYPES
from vlm_core.scoring import UNTYPED, score_predictions

SAMPLES_FILE = "eval_generate_samples.json"          # the (id, turn) of every sampled question
PREDICTIONS_FILE = "eval_generate_predictions.jsonl"  # the latest evaluation's answers, as predict.py writes them
PREFIX = "eval"
UNPARSED_BOXES = "unparsed_boxes"
SECONDS = "generate_seconds"
SAMPLES = "generate_samples"
# Scorer keys renamed for metric names (TensorBoard tags, --metric_for_best_model): no '@' or '.'.
_RENAMED = {"acc@0.5": "acc50"}
# Keys that count records rather than score them: constant across evaluations, not logged.
_NOT_LOGGED = ("n",)
# Scores the scorer leaves out (None) at an evaluation where they cannot be taken: no answer holds a number
# (count_mae), fewer than two descriptions (cider). A best model or early stop cannot follow such a metric.
MAY_BE_MISSING = ("count_mae", "cider")


# --------------------------------------------------------------------------- the sample
def val_questions(val_path: str | Path) -> list[dict]:
    """Every question of the validation file, in file order (predict.py's order)."""
    return [q for rec in iter_llava_records(val_path) for q in record_questions(rec)]


def qtype_of(question: dict) -> str:
    return question["type"] or UNTYPED


def draw_samples(questions: list[dict], n: int, seed: int) -> list[dict]:
    """At most ``n`` of ``questions``, an equal share per question type (water-filling: a type with fewer
    questions than its share gives them all and the others share the rest; what does not divide evenly goes to
    types drawn at random), drawn with ``seed``, kept in the order of ``questions``."""
    if len(questions) <= n:
        return list(questions)
    by_type: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_type.setdefault(qtype_of(q), []).append(i)
    rng = random.Random(seed)
    quota: dict[str, int] = {}
    left, remaining = n, sorted(by_type)
    while remaining:
        small = [t for t in remaining if len(by_type[t]) <= left // len(remaining)]
        if not small:
            break
        for qtype in small:
            quota[qtype] = len(by_type[qtype])
            left -= quota[qtype]
            remaining.remove(qtype)
    if remaining:
        share, extra = divmod(left, len(remaining))
        lucky = set(rng.sample(remaining, extra))
        quota.update({t: share + (t in lucky) for t in remaining})
    chosen = [i for qtype in sorted(by_type) for i in rng.sample(by_type[qtype], quota[qtype])]
    return [questions[i] for i in sorted(chosen)]


def _read_saved(path: Path) -> list[tuple[str, int]] | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return [(str(s["id"]), int(s["turn"])) for s in saved["samples"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: unreadable sample list ({e}); delete it to draw the sample again") from None


def sample_questions(val_path: str | Path, n: int, seed: int, saved_in: list[Path]) -> tuple[list[dict], str]:
    """The questions to evaluate and where they come from: the sample saved in the first of ``saved_in`` that
    holds :data:`SAMPLES_FILE` (a resumed run), else a fresh draw."""
    questions = val_questions(val_path)
    for folder in saved_in:
        keys = _read_saved(folder / SAMPLES_FILE)
        if keys is None:
            continue
        index = {(q["id"], q["turn"]): q for q in questions}
        missing = [k for k in keys if k not in index]
        if missing:
            raise InputError(f"--val_data: {val_path} no longer holds question {missing[0][0]!r} turn "
                             f"{missing[0][1]} of the generation sample saved in {folder / SAMPLES_FILE}; resume "
                             "with the validation file the run started with")
        return [index[k] for k in keys], f"the {len(keys)} questions saved in {folder / SAMPLES_FILE}"
    chosen = draw_samples(questions, n, seed)
    return chosen, f"{len(chosen)} of the {len(questions)} questions of {val_path}, drawn with seed {seed}"


def save_samples(folder: Path, questions: list[dict], val_path: str, n: int, seed: int) -> None:
    write_json_atomic(folder / SAMPLES_FILE, {
        "val_data": str(val_path), "eval_generate_samples": n, "seed": seed,
        "samples": [{"id": q["id"], "turn": q["turn"], "type": q["type"]} for q in questions]})


# --------------------------------------------------------------------------- metric names
def metric_key(qtype: str, key: str, prefix: str = PREFIX) -> str:
    """``eval_<type>_<metric>``, e.g. ``eval_grounding_acc50``."""
    name = f"{qtype}_{_RENAMED.get(key, key)}"
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"


def metric_keys(qtypes: set[str], prefix: str = PREFIX) -> list[str]:
    """Every metric name an evaluation of questions of ``qtypes`` can log (those in :data:`MAY_BE_MISSING`
    only when they can be taken)."""
    keys = []
    for qtype in sorted(qtypes):
        if qtype in GROUNDING_TYPES:
            names = ["acc@0.5", "mean_iou", "no_box"]
        elif qtype in DESCRIPTION_TYPES:
            names = ["bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider"]
        else:
            names = ["accuracy"] + (["count_exact", "count_mae", "count_no_number"] if qtype in COUNT_TYPES else [])
        keys += [metric_key(qtype, k, prefix) for k in names]
    if qtypes & set(GROUNDING_TYPES):
        keys.append(f"{prefix}_{UNPARSED_BOXES}")
    return keys + [f"{prefix}_{SECONDS}", f"{prefix}_{SAMPLES}"]


def flatten(result: dict, prefix: str = PREFIX) -> dict[str, float]:
    """The loggable numbers of :func:`vlm_core.scoring.score_predictions`' result, one name each."""
    out: dict[str, float] = {}
    for qtype, scores in result["per_type"].items():
        for key, value in scores.items():
            if key not in _NOT_LOGGED and value is not None:
                out[metric_key(qtype, key, prefix)] = value
    grounded = [result["per_type"][t] for t in GROUNDING_TYPES if t in result["per_type"]]
    if grounded:
        asked = sum(g["n"] for g in grounded)
        out[f"{prefix}_{UNPARSED_BOXES}"] = sum(g["no_box"] for g in grounded) / asked if asked else 0.0
    return out


def check_metric_for_best_model(name: str | None, qtypes: set[str]) -> None:
    """Refuse a ``--metric_for_best_model`` that names a generated metric this sample cannot give at every
    evaluation (a typo, a type the validation data lacks, a score that can be missing)."""
    if name is None:
        return
    key = name if name.startswith(f"{PREFIX}_") else f"{PREFIX}_{name}"
    known = metric_keys(qtypes)
    if key in known and not any(key.endswith(f"_{m}") for m in MAY_BE_MISSING):
        return
    trainer_own = (f"{PREFIX}_loss", f"{PREFIX}_runtime", f"{PREFIX}_samples_per_second",
                   f"{PREFIX}_steps_per_second")
    if key in trainer_own:
        return
    if not qtypes:
        raise InputError(f"--metric_for_best_model {name}: without --eval_generate an evaluation gives only the "
                         "loss (eval_loss); add --eval_generate for the generated scores (eval_grounding_acc50, ...)")
    why = ("it is left out at an evaluation where it cannot be taken (no number in any answer, or fewer than two "
           "descriptions)") if key in known else "no evaluation gives it"
    choices = [k for k in known if not any(k.endswith(f"_{m}") for m in MAY_BE_MISSING)
               and not k.endswith((SECONDS, SAMPLES))]
    raise InputError(f"--metric_for_best_model {name}: {why}; with --eval_generate on this --val_data choose "
                     f"eval_loss or one of: {', '.join(choices)}")


# --------------------------------------------------------------------------- the evaluator
class GenerationEvaluator:
    """Answers the sampled questions with the model being trained and scores them (see the module docstring)."""

    def __init__(self, questions: list[dict], image_dir: str | Path, processor, fmt: PromptFormat,
                 family: families.Family, frame: families.BoxFrame, max_new_tokens: int, batch_size: int,
                 output_dir: str | Path, val_path: str):
        self.questions = questions
        self.image_dir = Path(image_dir)
        self.image_paths = [resolve_image_path(self.image_dir, q["image"], f"{val_path}: id {q['id']!r}")
                            for q in questions]
        # A copy: training's processor keeps its right padding (and is what the model folder saves).
        self.processor = generation_processor(processor, copy_first=True)
        self.fmt, self.family, self.frame = fmt, family, frame
        self.fill = pad_fill(processor)
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.output_dir = Path(output_dir)
        self.qtypes = {qtype_of(q) for q in questions}

    def _images(self, paths: list[Path]) -> list:
        cache: dict[Path, object] = {}
        out = []
        for path, q in zip(paths, self.questions):
            if path not in cache:
                try:
                    cache[path] = load_image(path)
                except ImageLoadError as e:
                    raise InputError(f"--eval_generate: id {q['id']!r}: image {path}: {e}") from None
            out.append(cache[path])
        return out

    def answer(self, model, lo: int, hi: int, autocast, synced_gpus: bool = False, pad_to: int = 0) -> list[str]:
        """Answers to questions ``[lo, hi)``; with ``pad_to``, as many generate calls as a share of that size
        takes (ZeRO-3 / FSDP: every rank must run the same forward passes), the extra answers dropped."""
        share = list(range(lo, hi))
        if pad_to > len(share):
            share += [share[-1] if share else 0] * (pad_to - len(share))
        if not share:
            return []
        vision = [p for name, p in model.named_parameters() if families.module_role(self.family, name) == "vision"]
        pixel_dtype = vision[0].dtype if vision else None
        settings = greedy_settings(model, self.processor.tokenizer, self.max_new_tokens, use_cache=True)
        if synced_gpus:
            settings["synced_gpus"] = True
        with autocast:
            answers = generate_answers(model, self.processor, self.family, self.fmt, self.frame, self.fill,
                                       [self.questions[i]["question"] for i in share],
                                       self._images([self.image_paths[i] for i in share]),
                                       self.batch_size, settings, pixel_dtype=pixel_dtype,
                                       drawn_boxes=[self.questions[i].get("drawn_boxes") for i in share])
        return answers[:hi - lo]

    def evaluate(self, model, args, step: int, autocast, synced_gpus: bool = False,
                 prefix: str = PREFIX) -> dict[str, float]:
        """The metrics of one evaluation, the same on every rank."""
        import torch.distributed as dist
        rank, world = args.process_index, args.world_size
        n = len(self.questions)
        lo, hi = rank * n // world, (rank + 1) * n // world
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            answers = self.answer(model, lo, hi, autocast, synced_gpus, pad_to=-(-n // world) if synced_gpus else 0)
        finally:
            model.train(was_training)
        if world > 1:
            shares: list = [None] * world
            dist.all_gather_object(shares, answers)
            answers = [a for share in shares for a in share]
        metrics = None
        if rank == 0:
            seconds = time.perf_counter() - start
            records = [prediction_record(q, a, f"{self.output_dir} (training step {step})")
                       for q, a in zip(self.questions, answers)]
            metrics = flatten(score_predictions(records), prefix)
            metrics[f"{prefix}_{SECONDS}"] = round(seconds, 3)
            metrics[f"{prefix}_{SAMPLES}"] = n
            self._write_predictions(records)
        if world > 1:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics

    def _write_predictions(self, records: list[dict]) -> None:
        write_text_atomic(self.output_dir / PREDICTIONS_FILE, "".join(dumps_line(r).decode() + "\n" for r in records))
