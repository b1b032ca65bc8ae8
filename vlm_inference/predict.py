"""Stage 5b: answer every question of a LLaVA file with a trained model -> predictions.jsonl.

    python vlm_inference/predict.py --model_path vlm_model --base_model llava-hf/llava-1.5-7b-hf \\
        --data data/test_llava.json --image_dir data/images --output_file predictions.jsonl

Every human turn of every record is one question. The first is asked as training taught
it; a later turn k > 0 is asked as a fresh single-turn question about the same image
(without the earlier turns), so every answer depends only on its own question and the
image, and the model's own earlier answers never leak into the next question.

One JSON line per question, flushed as it is written:
``{"id", "image", "turn", "question", "answer", "reference", "type", "model"}`` (see the
contracts in the evaluation stage). A run that is stopped can be started again with the same
command: questions whose ``(id, turn)`` is already in ``--output_file`` are skipped (and a file
that another model wrote is refused). Large files
can be split over several processes or GPUs with ``--num_chunks N --chunk_idx K`` (one
``--output_file`` each; ``cat`` them together afterwards, every line stands alone).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vlm_annotation.io_utils import InputError, JsonlAppender, iter_jsonl, read_json
from vlm_annotation.runtime import report_input_errors, require_model, require_output_file, require_path
from vlm_inference.vlm_inference import VLMInference, add_model_args
from vlm_training.llava_format import IMAGE_TOKEN, resolve_image_path, validate_llava_records


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--data", required=True, help="LLaVA-format JSON file (e.g. test_llava.json)")
    parser.add_argument("--image_dir", required=True, help="folder the records' image paths are relative to")
    parser.add_argument("--output_file", default="predictions.jsonl",
                        help="JSONL to append predictions to (default predictions.jsonl); resumed if it exists")
    parser.add_argument("--batch_size", type=int, default=8, help="questions per generate call (default 8)")
    parser.add_argument("--num_chunks", type=int, default=1, help="split the records into this many shards (default 1)")
    parser.add_argument("--chunk_idx", type=int, default=0, help="which shard this process answers, 0-based (default 0)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise InputError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.max_new_tokens < 1:
        raise InputError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if args.num_chunks < 1:
        raise InputError(f"--num_chunks must be >= 1, got {args.num_chunks}")
    if not 0 <= args.chunk_idx < args.num_chunks:
        raise InputError(f"--chunk_idx must be in 0..{args.num_chunks - 1} for --num_chunks {args.num_chunks}, "
                         f"got {args.chunk_idx}")
    return args


def get_chunk(records: list, num_chunks: int, chunk_idx: int) -> list:
    """Shard ``chunk_idx`` of ``num_chunks`` contiguous, near-equal shards that cover ``records`` once."""
    n = len(records)
    return records[chunk_idx * n // num_chunks:(chunk_idx + 1) * n // num_chunks]


def record_questions(record: dict) -> list[dict]:
    """The questions of one (validated) LLaVA record: one dict per human turn."""
    turns, qa_types = record["conversations"], record.get("qa_types")
    return [{"id": record["id"], "image": record["image"], "turn": j // 2,
             "question": turns[j]["value"].replace(IMAGE_TOKEN, "").strip(), "reference": turns[j + 1]["value"],
             "type": qa_types[j // 2] if qa_types is not None else None}
            for j in range(0, len(turns), 2)]


def load_questions(data_path: Path, image_dir: Path, num_chunks: int, chunk_idx: int) -> tuple[int, list[dict]]:
    """This shard's records flattened to questions; (number of records, questions)."""
    # The same validator as training: every human turn has its reference answer, types are known.
    records = validate_llava_records(read_json(data_path), data_path)
    if not records:
        raise InputError(f"--data: {data_path} holds no records")
    seen: dict[str, int] = {}
    for i, record in enumerate(records):
        rid = record.get("id") if isinstance(record, dict) else None
        if isinstance(rid, str):
            if rid in seen:  # resuming keys on (id, turn): ids must be unique
                raise InputError(f"{data_path}: [{i}].id: duplicate of [{seen[rid]}].id ({rid!r})")
            seen[rid] = i
    indexed = get_chunk(list(enumerate(records)), num_chunks, chunk_idx)
    questions = []
    for i, record in indexed:
        resolve_image_path(image_dir, record["image"], f"{data_path}: record {i} (id {record['id']!r})")
        questions.extend(record_questions(record))
    return len(indexed), questions


def model_identity(model_path: str, base_model: str | None) -> str:
    """What a prediction line records as its model: resolved local paths, or hub ids."""
    def one(name):
        return str(Path(name).resolve()) if Path(name).exists() else name
    return one(model_path) + (f" (base {one(base_model)})" if base_model else "")


def done_keys(output_file: Path, model: str) -> set[tuple[str, int]]:
    """``(id, turn)`` of the predictions already in ``output_file`` (a killed writer's partial line aside).

    Lines written by another model refuse the resume: mixing two models' answers in one
    file would make its scores meaningless.
    """
    if not output_file.is_file():
        return set()
    keys = set()
    for line_no, rec in iter_jsonl(output_file):
        if not isinstance(rec, dict) or "id" not in rec or "turn" not in rec:
            raise InputError(f"{output_file}: line {line_no}: not a prediction (needs id and turn)")
        if rec.get("model", model) != model:
            raise InputError(f"{output_file}: line {line_no} was written by another model ({rec['model']}); "
                             "give another --output_file or delete this one")
        keys.add((rec["id"], rec["turn"]))
    return keys


@report_input_errors
def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    data_path = require_path(args.data, "--data", "file")
    image_dir = require_path(args.image_dir, "--image_dir", "dir")
    output_file = require_output_file(args.output_file, "--output_file", {"--data": data_path})
    require_model(args.model_path, "--model_path")
    n_records, questions = load_questions(data_path, image_dir, args.num_chunks, args.chunk_idx)
    model = model_identity(args.model_path, args.base_model)
    done = done_keys(output_file, model)
    shard = f"chunk {args.chunk_idx + 1}/{args.num_chunks}"
    foreign = done - {(q["id"], q["turn"]) for q in questions}
    if foreign:
        some = ", ".join(f"{i} turn {t}" for i, t in sorted(foreign)[:3])
        raise InputError(f"--output_file: {output_file} holds answers to {len(foreign)} questions that are not in "
                         f"--data {data_path} ({shard}), e.g. {some}; give another --output_file")
    if not questions:
        print(f"predict: no questions in {data_path} ({shard}): nothing to do", flush=True)
        return 0
    pending = [q for q in questions if (q["id"], q["turn"]) not in done]
    if not pending:
        print(f"predict: nothing to do: all {len(questions)} questions of {n_records} records ({shard}) "
              f"are already in {output_file}", flush=True)
        return 0

    vlm = VLMInference(args.model_path, base_model=args.base_model, device=args.device, dtype=args.dtype,
                       load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit)
    start = time.perf_counter()
    written = 0
    with JsonlAppender(output_file) as out, tqdm(total=len(pending), desc="predict", unit="q") as bar:
        for b in range(0, len(pending), args.batch_size):
            batch = pending[b:b + args.batch_size]
            answers = vlm.answer_questions([image_dir / q["image"] for q in batch], [q["question"] for q in batch],
                                           batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
            for q, answer in zip(batch, answers):
                out.write({"id": q["id"], "image": q["image"], "turn": q["turn"], "question": q["question"],
                           "answer": answer, "reference": q["reference"], "type": q["type"], "model": model})
                written += 1
            bar.update(len(batch))
    elapsed = time.perf_counter() - start
    print(f"predict: {written} answers written to {output_file} ({len(questions) - len(pending)} already there) "
          f"for {n_records} records ({shard}) in {elapsed:.1f}s, {written / max(elapsed, 1e-9):.2f} answers/s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
