"""Stage 5b: answer every question of a LLaVA file with a trained model -> predictions.jsonl.

    python vlm_inference/predict.py --model_path vlm_model --base_model llava-hf/llava-1.5-7b-hf \\
        --data data/test_llava.json --image_dir data/images --output_file predictions.jsonl

Every human turn of every record is one question. The first is asked as training taught
it; a later turn k > 0 is asked as a fresh single-turn question about the same image
(without the earlier turns), so every answer depends only on its own question and the
image, and the model's own earlier answers never leak into the next question.

One JSON line per question, flushed as it is written:
``{"id", "image", "turn", "question", "answer", "reference", "type", "model"}`` (see the
contracts in the evaluation stage); a grounding line adds the box frame it was asked in and the image's
size (``box_frame``, ``image_size``), and the summary line ends with the share of grounding answers that
hold no box or fall outside the image, warned about above 5% (a wrong frame: docs/families.md).
``--data`` (a JSON array or ``.jsonl``) is read a record at a time and the answers are written a line
at a time, so memory does not grow with the file.

A stopped run (Ctrl-C, SIGTERM, kill -9) is resumed by the same command: the answers already
in ``--output_file`` are kept and the questions after them asked (a file another model wrote,
or one of other questions, is refused). One run at a time writes a given ``--output_file``:
a second refuses, naming the first. A question whose image cannot be read, or whose prompt
does not fit the model's context, is reported and skipped. Large files can be split over
several processes or GPUs with ``--num_shards N --shard_index K`` (contiguous shards; one
``--output_file`` each; ``cat`` them together in shard order afterwards).

Records converted with visual box prompts have their boxes drawn on the image for every question. The
data must be converted the way the model is asked (``--box_prompt``, by default as it was trained):
other data is refused before the model loads.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

if __package__ in (None, ""):  # run as a file: its folder's vlm_inference.py would shadow the vlm_inference package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from vlm_core import families
from vlm_core.flags import IMAGES_DIR, flag_names
from vlm_core.frame_check import FrameCheck, displayed_size, frame_fields
from vlm_core.generation import record_questions
from vlm_core.io_utils import InputError, JsonlAppender, stream_jsonl
from vlm_core.llava_format import iter_llava_records, record_box_prompt, record_where, resolve_image_path
from vlm_core.predictions import is_prediction_line, prediction_record
from vlm_core.prompts import PromptFormat
from vlm_core.runtime import (
    plural,
    progress_bar,
    report_input_errors,
    require_output_file,
    require_path,
    single_writer,
)
from vlm_core.schema import GROUNDING_TYPES
from vlm_inference.model_args import add_model_args, check_model_args
from vlm_inference.vlm_inference import InferenceInputError, load_model


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--data", required=True,
                        help="LLaVA-format file, a JSON array or .jsonl (e.g. test_llava.json)")
    parser.add_argument(*flag_names("--image_dir", IMAGES_DIR), required=True,
                        help="folder the records' image paths are relative to")
    parser.add_argument("--output_file", default="predictions.jsonl",
                        help="JSONL to append predictions to (default predictions.jsonl); resumed if it exists")
    parser.add_argument("--batch_size", type=int, default=8, help="questions per generate call (default 8)")
    parser.add_argument("--num_shards", "--num_chunks", dest="num_shards", type=int, default=1,
                        help="split the records into this many contiguous shards (default 1; old name --num_chunks)")
    parser.add_argument("--shard_index", "--chunk_idx", dest="shard_index", type=int, default=0,
                        help="which shard this process answers, 0-based (default 0; old name --chunk_idx)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise InputError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.num_shards < 1:
        raise InputError(f"--num_shards must be >= 1, got {args.num_shards}")
    if not 0 <= args.shard_index < args.num_shards:
        raise InputError(f"--shard_index must be in 0..{args.num_shards - 1} for --num_shards {args.num_shards}, "
                         f"got {args.shard_index}")
    check_model_args(args)
    args.data = require_path(args.data, "--data", "file")
    args.image_dir = require_path(args.image_dir, "--image_dir", "dir")
    args.output_file = require_output_file(args.output_file, "--output_file",
                                           {"--data": args.data, "--image_dir": args.image_dir})
    return args


def read_records(data_path: Path, validate: bool = True) -> Iterator[tuple[int, dict]]:
    """``(index, record)`` for every record of ``--data``: the one reader of the file. The first pass
    (:func:`count_records`) validates each record; later passes trust it (``validate=False``)."""
    yield from enumerate(iter_llava_records(data_path, validate=validate))


def shard_bounds(n: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """Records ``[lo, hi)`` of shard ``shard_index``: contiguous, near-equal shards that cover ``n`` once."""
    return shard_index * n // num_shards, (shard_index + 1) * n // num_shards


def model_frame(model_path: str, base_model: str | None) -> families.BoxFrame:
    """The box frame of the model asked, known without loading it (a trained folder saved it)."""
    error = None
    for source in (model_path, base_model):
        if source is not None:
            try:
                return families.frame_for(source)
            except families.FamilyError as e:
                error = error or e
    raise InputError(f"--model_path: {error}")


def model_box_prompt(model_path: str) -> str:
    """How the model was taught to name boxes (its prompt_format.json), known without loading it."""
    local = Path(model_path).expanduser()
    try:
        return PromptFormat.load(local).box_prompt if local.is_dir() else "text"
    except (ValueError, TypeError, OSError):
        return "text"  # a damaged file is reported, in one line, when the model loads


def check_box_prompt(record: dict, where: str, asked: str, told: bool) -> None:
    """Refuse a record converted for another way of naming boxes than the model is asked with (``told``: by
    --box_prompt, else as it was trained): its questions would name boxes that are not drawn, or not named."""
    mode = record_box_prompt(record)[0]
    if mode == asked:
        return
    how = "--box_prompt" if told else "--box_prompt (as it was trained)"
    also = "" if told else f", or pass --box_prompt {mode} to ask it that way anyway"
    raise InputError(f"{where}: converted with --box_prompt {mode}, but the model is asked with {how} {asked}; "
                     f"convert the data again with --box_prompt {asked}{also}")


def count_records(data_path: Path, frame: families.BoxFrame | None = None, model: str = "",
                  box_prompt: tuple[str, bool] | None = None) -> int:
    """The number of records; ids must be unique, since answers are matched to questions by ``(id, turn)``.

    With ``frame``, a record whose boxes were rendered for another family or resize setting is refused:
    the model would read its boxes in the wrong frame. With ``box_prompt`` (the way the model is asked, and
    whether --box_prompt said so), a record converted for another way (:func:`check_box_prompt`)."""
    seen: dict[str, int] = {}
    for i, record in read_records(data_path):
        if box_prompt is not None:
            check_box_prompt(record, record_where(data_path, i, record), *box_prompt)
        if frame is not None:
            where = record_where(data_path, i, record)
            try:
                families.check_frame(families.frame_of_record(record, where), frame, where, model)
            except families.FamilyError as e:
                raise InputError(str(e)) from None
        if record["id"] in seen:
            raise InputError(f"{record_where(data_path, i, record)}: duplicate id (record {seen[record['id']]} "
                             "has it too)")
        seen[record["id"]] = i
    if not seen:
        raise InputError(f"--data: {data_path} holds no records")
    return len(seen)


def shard_questions(data_path: Path, image_dir: Path, lo: int, hi: int, check_images: bool) -> Iterator[dict]:
    """The questions of records ``[lo, hi)`` in file order (their image paths checked when asked)."""
    for i, record in read_records(data_path, validate=False):  # count_records validated them
        if i >= hi:
            return
        if i >= lo:
            if check_images:
                resolve_image_path(image_dir, record["image"], record_where(data_path, i, record))
            yield from record_questions(record)


def model_identity(model_path: str, base_model: str | None) -> str:
    """What a prediction line records as its model: resolved local paths, or hub ids."""
    def one(name):
        return str(Path(name).resolve()) if Path(name).exists() else name
    return one(model_path) + (f" (base {one(base_model)})" if base_model else "")


def resume_point(output_file: Path, questions: Iterator[dict], model: str) -> tuple[int, int, int]:
    """``(answers kept, questions before the first one to ask, total questions)``.

    The file must answer the questions in their order (as this stage writes them); questions
    it skips over were skipped by an earlier run (unreadable image, over-long prompt) and stay so.
    """
    kept = position = 0
    # A killed writer's partial last line is not counted: JsonlAppender drops it, and it is asked again.
    for line_no, rec in stream_jsonl(output_file, skip_partial_last=True) if output_file.exists() else ():
        if not is_prediction_line(rec):
            raise InputError(f"{output_file}: line {line_no}: not a prediction (needs id and turn)")
        if rec.get("model", model) != model:
            raise InputError(f"{output_file}: line {line_no} was written by another model ({rec['model']}); "
                             "give another --output_file or delete this one")
        for q in questions:
            position += 1
            if (q["id"], q["turn"]) == (rec["id"], rec["turn"]):
                break
        else:
            raise InputError(f"{output_file}: line {line_no} (id {rec['id']!r} turn {rec['turn']}) answers a "
                             "question that is not in --data (this shard), or not in its order; "
                             "give another --output_file")
        kept += 1
    return kept, position, position + sum(1 for _ in questions)


def ask(vlm, batch: list[dict], image_dir: Path, data_path: Path, max_new_tokens: int, batch_size: int):
    """``(question, answer)`` for the batch; a question the model cannot take is reported and left out."""
    batch = list(batch)
    while batch:
        try:
            answers = vlm.answer_questions([image_dir / q["image"] for q in batch], [q["question"] for q in batch],
                                           batch_size=batch_size, drawn_boxes=[q.get("drawn_boxes") for q in batch],
                                           max_new_tokens=max_new_tokens)
            return list(zip(batch, answers))
        except InferenceInputError as e:
            if e.index is None:
                raise
            q = batch.pop(e.index)
            tqdm.write(f"predict: skipped {data_path}: id {q['id']!r} turn {q['turn']}: {e}", file=sys.stderr)
    return []


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    data_path, image_dir, output_file = args.data, args.image_dir, args.output_file
    asked = (args.box_prompt, True) if args.box_prompt else (model_box_prompt(args.model_path), False)
    n_total = count_records(data_path, model_frame(args.model_path, args.base_model),
                            args.base_model or args.model_path, asked)
    lo, hi = shard_bounds(n_total, args.num_shards, args.shard_index)
    shard = f"shard {args.shard_index + 1}/{args.num_shards}"
    model = model_identity(args.model_path, args.base_model)
    with single_writer(output_file, "--output_file"):
        kept, position, total = resume_point(
            output_file, shard_questions(data_path, image_dir, lo, hi, check_images=True), model)
        if total == position:
            print(f"predict: nothing to do: {plural(total, 'question')} of {plural(hi - lo, 'record')} ({shard}), "
                  f"all answered in {output_file}" + (f" or skipped ({position - kept})" if position > kept else ""),
                  flush=True)
            return 0
        vlm = load_model(args)
        start, written, skipped = time.perf_counter(), 0, 0
        frames = FrameCheck()  # where this run's grounding answers fall: a wrong frame shows there
        pending = shard_questions(data_path, image_dir, lo, hi, check_images=False)
        for _ in range(position):
            next(pending)
        with JsonlAppender(output_file) as out, progress_bar(total=total - position, desc="predict", unit="q") as bar:
            while batch := [q for _, q in zip(range(args.batch_size), pending)]:
                answered = ask(vlm, batch, image_dir, data_path, args.max_new_tokens, args.batch_size)
                for q, answer in answered:
                    rec = prediction_record(q, answer, model)
                    if q["type"] in GROUNDING_TYPES:  # the frame and size evaluate.py needs to place the box
                        width, height = displayed_size(image_dir / q["image"])
                        rec.update(frame_fields(vlm.frame, width, height))
                        frames.add(answer, vlm.frame, width, height)
                    out.write(rec)
                written += len(answered)
                skipped += len(batch) - len(answered)
                bar.update(len(batch))
    elapsed = time.perf_counter() - start
    print(f"predict: {plural(written, 'answer')} written to {output_file} ({kept} already there"
          + (f", {skipped} skipped" if skipped else "") + f") for {plural(hi - lo, 'record')} ({shard}) "
          f"in {elapsed:.1f}s, {written / max(elapsed, 1e-9):.2f} answers/s"
          + (f"; {frames.summary()}" if frames.counts else ""), flush=True)
    for line in frames.warnings("predict"):
        print(line, file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
