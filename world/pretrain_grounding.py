"""Pretrain a world VLM of any family to ground a phrase: its language model looks at the object a question names and
writes its box, as a stand-in for the grounding a real LLaVA-1.5 or Qwen2.5-VL brings to a fine-tune.

    python world/pretrain_grounding.py --coco pool/train.json --image_dir pool/train_images \
        --base_model llava_built --out world/models/vlm_base --freeze_projector

Why (docs/world.md, "Why ``locate`` stays near 0.14"): a real LLaVA-1.5 is fine-tuned from a model that already
grounds phrases (its instruction data holds RefCOCO and Visual Genome region boxes), while the world's VLM was
fine-tuned from a vision tower and a language model pretrained apart, which had never met. Its box lay in the
tower's tokens (a linear read-out of the tokens an object covers passes IoU 0.5 for 0.68 of held-out objects),
but the language model never learnt to pick those tokens out: where it wrote a box, its attention over the image
was even (0.03-0.14 of it on the named object's tokens, 0.069 for an even spread), and ``locate`` stayed at
0.12-0.14 whatever else was changed.

So the VLM (projector and language model; the tower stays as it is) is pretrained on the grounding questions of a
pool's ground truth (the toolkit's own Q&A code on the world's labels, each rendered as
``convert_to_llava_format.py`` renders it for LLaVA-1.5, tokenized by the training code's own ``TokenLayout``),
with two losses:

* the answer's tokens (the box), as ``train_vlm.py``'s loss;
* pointing: at every position that predicts an answer token, heads ``--point_heads`` of layers ``--point_layers``
  are taught to put their attention over the image on the named object: cross-entropy against an even spread
  over the image tokens whose patch centre lies in the object's box (:func:`object_tokens`).

Measured (docs/world.md, "A VLM pretrained to ground"): with the answer's loss alone the pretrained VLM grounded
held-out scenes at Acc@0.5 0.204; with pointing the heads put 0.71 of their image attention on the object and it
grounded them at 0.33-0.41. Pointing alone, with no answer's loss, taught heads nothing read, which the fine-tuning
undid. A projector trained by the pointing cost the scene's surface in the fine-tuning, hence ``--freeze_projector``
for the committed ``world/models/vlm_base`` (its ``COMMAND``); ``--point_types`` also points the heads of region
questions at their drawn box (attention only), which diluted the grounding.

The last 5% of the scenes are held out and scored after training: the heads' share of image attention on the
named object (``point_share``; even spread: ``even_share``) and the boxes the model writes by greedy decoding,
parsed in the family's frame, against the truth (``acc50``, ``mean_iou``, ``no_box``). ``--out`` is the whole LLaVA
(tower, projector, language model) with its processor, what ``train_vlm.py --base_model`` and ``world.sh``'s
``WORLD_VLM_FROM`` take, written to a temporary folder and renamed, with ``pretrain_info.json`` (the command, the
figures, the loss curve).

Every family (issue 26): ``--base_model`` may be any family's world VLM (``world/make_family.py``). Its questions are
rendered in its own box frame and chat template (the training code's ``family_layout``), its boxes parsed by its own
parser; the pointing targets are its own image tokens: LLaVA-1.5's and ViP-LLaVA's square grid over the padded image
(:func:`object_tokens`), every other family's layout (anyres tiles with newlines, Qwen's merge windows) read from its
own processor and model by ``world/token_places.py``. The tower learns only with ``--train_vision_tower`` (a Qwen
family's merger, its projector, only without ``--freeze_projector``); ``world/models/family_vlms/<family>`` are made
without it (their ``COMMAND``), and ``make world-families`` starts from them. Tried on Qwen2.5-VL, whose tower tells a
token's place ill: 1200 more steps with the tower learning located the families run's test objects no better than
without (Acc@0.5 0.125 against 0.122); a further 1200 steps of the language model alone did (0.157).

Class binding (issue 24): ``--bind_types exists count_class`` also teaches the answers of "is there a can?" and "how
many cans?", the heads pointing at every can of the scene (at nothing where it holds none), and scores them on the
held-out scenes beside the training majority (``held_out.bind``). From ``vlm_base``, 800 steps: ``exists`` 0.638
against a majority of 0.595, ``count_class`` 0.401 against 0.442 (docs/world.md, session 16): not the lever yet.

Kept answers (issue 26): ``--keep_types count surface ...`` also teaches those questions' answers, pointing nowhere,
``--keep_share`` of each batch, so that the language model keeps what it knew of them; a pass of grounding alone makes
it forget them, and the fine-tuning then starts far from its data (Qwen2.5-VL's first loss 7.4). With them kept it
started at 1.75 and still located no better after the fine-tuning (0.098 against 0.111; docs/world.md, session 17).
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if __package__ in (None, ""):  # run as a file: its folder is not an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_annotation.label_readers import load_coco  # noqa: E402
from vlm_core import families  # noqa: E402
from vlm_core.boxes import iou, pixel_to_square  # noqa: E402
from vlm_core.io_utils import InputError  # noqa: E402
from world.token_places import token_places, tokens_in_box  # noqa: E402
from world.training import train_for, warmup_cosine, write_llava  # noqa: E402
from world.truth import truth_annotations  # noqa: E402

IGNORE = -100
IMAGE_INPUTS = ("pixel_values", "image_sizes", "image_grid_thw")  # a dataset item's image inputs, every family's
# The question types about one object (``object_ids``), which a head can be taught to point at.
POINTABLE = ("grounding", "location", "region_label", "region_description", "surface")
# The question types about every object of a class ("is there a can?", "how many cans?": class binding), whose heads
# can be taught to point at all of them, none where the scene holds none.
CLASS_TYPES = ("exists", "count_class")
# The question types whose answers --keep_types can teach beside grounding, pointing nowhere.
KEEPABLE = ("count", "count_class", "exists", "location", "region_description", "region_label", "relation", "surface")


def object_tokens(box: list[float], width: float, height: float, grid: int) -> list[int]:
    """The image tokens (row-major over a ``grid x grid`` square) whose patch centre lies in the pixel ``box`` of an
    image padded to a square as LLaVA-1.5's processor is fed; the one nearest the box centre when none does."""
    x1, y1, x2, y2 = pixel_to_square(box, width, height)
    centre = [((k % grid + 0.5) / grid, (k // grid + 0.5) / grid) for k in range(grid * grid)]
    inside = [k for k, (cx, cy) in enumerate(centre) if x1 <= cx <= x2 and y1 <= cy <= y2]
    if inside:
        return inside
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2
    return [min(range(grid * grid), key=lambda k: (centre[k][0] - mx) ** 2 + (centre[k][1] - my) ** 2)]


def pointing_records(coco: dict, seed: int, types: tuple[str, ...] = ("grounding",), box_prompt: str = "visual",
                     frame: families.BoxFrame | None = None,
                     keep_types: tuple[str, ...] = ()) -> list[tuple[dict, list[dict]]]:
    """(LLaVA record, objects) for every ground-truth question of ``types`` in ``coco``'s images, one question per
    record, rendered by the toolkit's converter in ``frame`` (default LLaVA-1.5's; a region question's box drawn on
    the image, as ``--box_prompt visual`` asks). ``objects`` are the ones the question is about, from the truth (each
    with its pixel ``bbox``): the one it names for a question about one object (:data:`POINTABLE`), every object of
    the class it names for :data:`CLASS_TYPES` (none where the scene holds none). A question of ``keep_types`` comes
    with no object (nothing to point at: its answer alone is taught)."""
    from vlm_training.conversion import image_records

    out = []
    for i, rec in enumerate(truth_annotations(coco, seed)["images"]):
        objects = {o["id"]: o for o in rec["objects"]}
        for qa in rec["qa"]:
            ids = qa.get("object_ids") or []
            if qa["type"] in keep_types:
                ids = []
            elif qa["type"] not in types or (qa["type"] not in CLASS_TYPES and len(ids) != 1):
                continue
            (record,) = image_records(dict(rec, qa=[qa]), i, "world ground truth", 1, frame=frame,
                                      box_prompt=box_prompt)
            out.append((dict(record, id=f"{record['image']}#{len(out)}"), [objects[k] for k in ids]))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco", required=True, help="COCO json of the scenes whose ground-truth grounding questions are "
                   "the data: a pool drawn by make_world.py (never the held-out scenes a run is scored on)")
    p.add_argument("--image_dir", required=True, help="folder of the COCO file's images")
    p.add_argument("--base_model", required=True, help="world VLM to start from: world/make_llava.py's LLaVA-1.5 or "
                   "world/make_family.py's model of any family, with its pretrained tower and language model")
    p.add_argument("--out", required=True, help="folder to write the pretrained VLM to")
    p.add_argument("--max_images", type=int, default=0, help="use the first N scenes of the COCO file (default 0: all)")
    p.add_argument("--point_layers", type=int, nargs="+", default=[1, 2],
                   help="language-model layers whose heads are taught to point (default 1 2)")
    p.add_argument("--point_heads", type=int, default=2,
                   help="the first N heads of each of those layers point; the others stay free (default 2)")
    p.add_argument("--point_types", nargs="+", default=["grounding"], choices=POINTABLE,
                   help="question types about one object whose heads are taught to point at it, besides grounding (default: "
                   "grounding only); the answer's loss is on grounding questions only, so the others' answers stay "
                   "untaught")
    p.add_argument("--bind_types", nargs="+", default=[], choices=CLASS_TYPES,
                   help="class binding: question types about every object of a class whose answers are taught too, "
                   "their heads pointing at all of those objects (at none, the answer alone, where the scene holds "
                   "none; default: none)")
    p.add_argument("--keep_types", nargs="+", default=[], choices=KEEPABLE,
                   help="question types whose answers are taught too, without pointing, so that the language model "
                   "keeps what it knew of them: a pass of grounding alone makes it forget them, and the fine-tuning "
                   "then starts far from its data (default: none)")
    p.add_argument("--keep_share", type=float, default=0.5,
                   help="with --keep_types: the share of each batch drawn from their questions (default 0.5)")
    p.add_argument("--point_weight", type=float, default=0.3,
                   help="weight of the pointing loss beside the answer's (default 0.3; 0: the answer's loss alone)")
    p.add_argument("--freeze_projector", action="store_true",
                   help="keep the projector (a Qwen family's: its tower's merger) as the base has it; only the language "
                   "model learns (default: both learn)")
    p.add_argument("--train_vision_tower", action="store_true",
                   help="the vision tower learns too (its merger, a Qwen family's projector, only without "
                   "--freeze_projector); default: the tower stays as the base has it")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock cap of the whole run (default 30)")
    p.add_argument("--max_steps", type=int, default=1200, help="step cap (default 1200)")
    p.add_argument("--batch_size", type=int, default=16, help="questions per step (default 16)")
    p.add_argument("--learning_rate", type=float, default=5e-4, help="AdamW peak learning rate, warm-up then cosine "
                   "(default 5e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Q&A sampling and the batches (default 0)")
    args = p.parse_args(argv)
    if Path(args.out).resolve() == Path(args.base_model).resolve():
        p.error("--out must differ from --base_model (the base stays as it was)")
    if args.minutes <= 0 or args.max_steps < 1 or args.batch_size < 1 or args.learning_rate <= 0:
        p.error("--minutes, --max_steps, --batch_size and --learning_rate must be > 0")
    if not 0 <= args.keep_share <= 1:
        p.error("--keep_share must be between 0 and 1")
    if set(args.keep_types) & {*args.point_types, *args.bind_types}:
        p.error("--keep_types: a type there is taught without pointing; it cannot be in --point_types or --bind_types")
    if args.max_images < 0 or args.point_heads < 0 or args.point_weight < 0:
        p.error("--max_images, --point_heads and --point_weight must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from vlm_training.family_data import family_layout
    from vlm_training.llava_data import LlavaCollator, LlavaDataset, build_examples

    start = time.perf_counter()
    base, out = Path(args.base_model), Path(args.out)
    try:
        coco = load_coco(args.coco)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.max_images:
        coco["images"] = coco["images"][:args.max_images]
    if not (base / "config.json").is_file():
        print(f"error: --base_model {base}: no config.json there (a world LLaVA written by world/make_llava.py)",
              file=sys.stderr)
        return 2
    try:
        family = families.detect_family(base)
    except families.FamilyError as e:
        print(f"error: --base_model {base}: {e}", file=sys.stderr)
        return 2
    text_config = AutoConfig.from_pretrained(base).text_config
    bad = [n for n in args.point_layers if not 0 <= n < text_config.num_hidden_layers]
    if bad or args.point_heads > text_config.num_attention_heads:
        print(f"error: --point_layers {args.point_layers} / --point_heads {args.point_heads}: the language model has "
              f"{text_config.num_hidden_layers} layers of {text_config.num_attention_heads} heads", file=sys.stderr)
        return 2
    # Eager attention: the pointing loss reads the attention weights, which the fused kernels do not return.
    model = AutoModelForImageTextToText.from_pretrained(base, attn_implementation="eager")
    processor = AutoProcessor.from_pretrained(base)
    try:
        layout = family_layout(processor, family, box_prompt="visual", system_prompt="none")
    except families.FamilyError as e:
        print(f"error: --base_model {base}: {e}", file=sys.stderr)
        return 2
    frame = layout.frame
    places = {}  # (width, height) -> where each image token sits in the image (world/token_places.py)

    def pointing_target(boxes: list[list[float]], width: int, height: int) -> torch.Tensor | None:
        """An even spread over the image tokens that see any of the boxes, one weight per image token of the example;
        None without a box (a class the scene does not hold: nothing to point at)."""
        cover, n = set(), 0
        for box in boxes:
            if frame.kind == "padded_square":  # LLaVA-1.5 / ViP-LLaVA: the square grid, exactly (object_tokens)
                grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
                n, tokens = grid * grid, object_tokens(box, width, height, grid)
            else:  # every other family's layout, read from its own processor and model (token_places)
                if (width, height) not in places:
                    places[width, height] = token_places(model, layout, width, height)
                n, tokens = len(places[width, height]), tokens_in_box(places[width, height], box, width, height)
            cover.update(tokens)
        if not cover:
            return None
        target = torch.zeros(n)
        target[sorted(cover)] = 1.0 / len(cover)
        return target

    # The last 5% of the scenes are held out of the training and scored after it.
    n_images = len(coco["images"])
    n_val = max(1, n_images // 20) if n_images >= 20 else 0
    types = tuple(dict.fromkeys(["grounding", *args.point_types, *args.bind_types]))
    taught = {"grounding", *args.bind_types, *args.keep_types}  # the types whose answers are taught
    pairs = {"train": pointing_records(dict(coco, images=coco["images"][:n_images - n_val]), args.seed, types,
                                       frame=frame, keep_types=tuple(args.keep_types))}
    # The held-out figures are the grounding questions' and, with --bind_types, the class-binding answers'.
    held = pointing_records(dict(coco, images=coco["images"][n_images - n_val:]), args.seed,
                            ("grounding", *args.bind_types), frame=frame)
    pairs["held_out"] = [row for row in held if row[0]["qa_types"] == ["grounding"]]
    if args.bind_types:
        pairs["held_out_bind"] = [row for row in held if row[0]["qa_types"] != ["grounding"]]
    if not any(r["qa_types"] == ["grounding"] for r, _ in pairs["train"]):
        print(f"error: --coco {args.coco}: no grounding question in its scenes", file=sys.stderr)
        return 2
    data = {}
    try:
        for part, rows in pairs.items():
            examples, _ = build_examples((r for r, _ in rows), Path(args.coco), args.image_dir, layout, 512)
            dataset = LlavaDataset(examples, layout, Path(args.coco))
            feats = []
            for k, ex in enumerate(examples):
                try:
                    f = dataset[k]
                except InputError as e:  # an image that cannot be read: reported and left out, the run goes on
                    print(f"warning: skipped {e}", file=sys.stderr, flush=True)
                    continue
                record, objs = rows[ex.record_index]
                target = pointing_target([o["bbox"] for o in objs], record["width"], record["height"])
                answer = (f["labels"] != IGNORE).nonzero().flatten()
                (qtype,) = record["qa_types"]
                # the image inputs are made again for each batch: kept for every question, a Qwen family's patch rows
                # (an image scaled up to 224 px, two frames) would take 10 GB for the pool
                feats.append({key: value for key, value in f.items() if key not in IMAGE_INPUTS}
                             | {"images": functools.partial(image_inputs, dataset, k), "target": target,
                                "answer_start": int(answer[0]), "answer_end": int(answer[-1]),
                                "box": objs[0]["bbox"] if objs else None, "type": qtype,
                                "answer": record["conversations"][-1]["value"],
                                "size": (record["width"], record["height"]),
                                # only the grounding, --bind_types and --keep_types answers are taught; the others'
                                # labels are dropped
                                "labels": f["labels"] if qtype in taught else torch.full_like(f["labels"], IGNORE)})
            data[part] = feats
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not data["train"]:
        print(f"error: --image_dir {args.image_dir}: none of the images of the grounding questions could be read",
              file=sys.stderr)
        return 2
    n_taught = sum(bool((f["labels"] != IGNORE).any()) for f in data["train"])
    print(f"questions: {len(data['train'])} of {n_images - n_val} scenes ({n_taught} with their answers taught), "
          f"{len(data['held_out'])} grounding questions held out", flush=True)
    collate = LlavaCollator(layout.pad_token_id, padding_side="right", image_token_id=layout.image_token_id)
    image_token = layout.image_token_id

    def losses(rows):
        batch = collate([f | f["images"]() for f in rows])
        labels = batch.pop("labels")
        result = model(**batch, output_attentions=bool(args.point_weight))
        # summed over the answer tokens, then divided by their number: a batch of other types alone adds 0, not nan
        target = labels[:, 1:].flatten()
        answer = torch.nn.functional.cross_entropy(result.logits[:, :-1].flatten(0, 1), target, ignore_index=IGNORE,
                                                   reduction="sum") / (target != IGNORE).sum().clamp(min=1)
        if not args.point_weight:
            return answer, answer.new_zeros(()), []
        point, shares = [], []
        for row, f in enumerate(rows):
            # a class the scene does not hold, or a --keep_types question: its answer alone is taught
            if f["target"] is None:
                continue
            image = (batch["input_ids"][row] == image_token).nonzero().flatten()
            writing = torch.arange(f["answer_start"] - 1, f["answer_end"])  # the positions that predict the answer
            for layer in args.point_layers:
                att = result.attentions[layer][row, :args.point_heads][:, writing][:, :, image]
                point.append(-(f["target"] * torch.log(att + 1e-6)).sum(-1).mean())
                on = (att * (f["target"] > 0)).sum(-1) / att.sum(-1).clamp(min=1e-9)
                shares.append(float(on.mean().detach()))
        return answer, torch.stack(point).mean() if point else answer.new_zeros(()), shares

    def loss_of(rows):
        answer, point, _ = losses(rows)
        return answer + args.point_weight * point

    torch.manual_seed(args.seed)
    learners = [model.model.language_model, model.lm_head]
    if not args.freeze_projector:  # the LLaVA families' projector; a Qwen family's is its tower's merger
        projector = getattr(model.model, "multi_modal_projector", None)
        learners.append(projector if projector is not None else model.model.visual.merger)
    if args.train_vision_tower:  # a tower whose tokens tell their place ill (a Qwen tower's) learns it here
        visual = getattr(model.model, "visual", None)
        learners += ([m for name, m in visual.named_children() if name != "merger"] if visual is not None
                     else [model.model.vision_tower])
    model.requires_grad_(False)  # the tower (and a frozen projector) only pass gradients on, to nothing
    for m in learners:
        m.requires_grad_(True)
    params = [p for m in learners for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    batches = draw_batches(data["train"], args.batch_size, generator, args.keep_types, args.keep_share)
    trained = torch.nn.ModuleList(learners)
    run = train_for(trained, loss_of, batches, optimizer, minutes=args.minutes, max_steps=args.max_steps,
                    start=start, schedule=warmup_cosine(max(1, args.max_steps // 25)), replan_every=100,
                    log_every=100, name="grounding")
    model.eval()
    scores = score(model, processor, collate, losses, data["held_out"], frame) if data["held_out"] else {}
    if data.get("held_out_bind"):
        scores["bind"] = score_answers(model, processor, collate, data["held_out_bind"], data["train"])
    seconds = time.perf_counter() - start
    info = {"script": "world/pretrain_grounding.py", "argv": list(sys.argv[1:] if argv is None else argv),
            "seed": args.seed, "base_model": str(base), "scenes": n_images, "train_scenes": n_images - n_val,
            "questions": len(data["train"]), "steps": run.steps, "batch_size": args.batch_size,
            "learning_rate": args.learning_rate, "point_layers": args.point_layers, "point_heads": args.point_heads,
            "point_weight": args.point_weight, "point_types": args.point_types, "bind_types": args.bind_types,
            "keep_types": args.keep_types, "keep_share": args.keep_share if args.keep_types else None,
            "seconds": round(seconds, 1), "held_out": scores,
            "loss_curve": [[h["step"], round(h["loss"], 4)] for h in run.history]}
    model.config._attn_implementation = "sdpa"  # the saved model loads as any other; eager was for the loss only
    write_llava(out, base, model, info)
    figures = ", ".join([f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float)]
                        + [f"{t} {v['accuracy']:.3f} (majority {v['majority']:.3f})"
                           for t, v in scores.get("bind", {}).items()])
    print(f"pretrained grounding for {run.steps} steps on {len(data['train'])} questions in {seconds:.1f}s "
          f"(last loss {run.last_loss:.3f}; held out: {figures}) -> {out}", flush=True)
    if not math.isfinite(run.last_loss):
        print("error: the pretraining loss is not finite", file=sys.stderr)
        return 1
    return 0


def draw_batches(rows: list[dict], batch_size: int, generator, keep_types=(), keep_share: float = 0.5):
    """Endless batches of ``rows`` drawn at random with replacement (seeded by ``generator``). With ``keep_types``,
    ``round(batch_size * keep_share)`` of each batch are rows of those types (``row["type"]``), the rest the others."""
    import torch

    def draw(pool: list, n: int) -> list:
        return [pool[i] for i in torch.randint(len(pool), (n,), generator=generator).tolist()] if n else []

    if not keep_types:
        return iter(lambda: draw(rows, batch_size), None)
    kept = [r for r in rows if r["type"] in keep_types]
    rest = [r for r in rows if r["type"] not in keep_types]
    n_kept = min(batch_size, round(batch_size * keep_share)) if kept else 0
    return iter(lambda: draw(rest, batch_size - n_kept) + draw(kept, n_kept), None)


def image_inputs(dataset, k: int) -> dict:
    """The image inputs of ``dataset``'s item ``k`` (its pixels, and its grid or size where the family has one)."""
    return {key: v for key, v in dataset[k].items() if key in IMAGE_INPUTS}


def greedy_answers(model, processor, collate, feats, max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """What the model writes after each question's prompt by greedy decoding (left-padded, as inference pads)."""
    import torch

    left = type(collate)(collate.pad_token_id, padding_side="left", image_token_id=collate.image_token_id)
    answers = []
    with torch.no_grad():
        for s in range(0, len(feats), batch_size):
            rows = feats[s:s + batch_size]
            batch = left([f["images"]() | {"input_ids": f["input_ids"][:f["answer_start"]],
                                           "labels": f["labels"][:f["answer_start"]]} for f in rows])
            batch.pop("labels")
            width = batch["input_ids"].shape[1]
            written = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)[:, width:]
            answers += [processor.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in written]
    return answers


def score_answers(model, processor, collate, feats, train) -> dict:
    """Held-out class-binding figures per type, read as the world run scores them: the share of answers whose yes/no
    (``exists``) or number (``count_class``) is right, beside the share the training questions' most common one
    gets."""
    from collections import Counter

    from vlm_annotation.qa_truth import answer_number, answer_yes

    key = {"exists": answer_yes, "count_class": answer_number}
    said = greedy_answers(model, processor, collate, feats, max_new_tokens=16)
    out = {}
    for qtype in sorted({f["type"] for f in feats}):
        rows = [(key[qtype](f["answer"]), key[qtype](a)) for f, a in zip(feats, said) if f["type"] == qtype]
        common = Counter(key[qtype](f["answer"]) for f in train if f["type"] == qtype).most_common(1)
        majority = common[0][0] if common else None
        out[qtype] = {"n": len(rows), "accuracy": sum(t is not None and t == a for t, a in rows) / len(rows),
                      "majority": sum(t == majority for t, _ in rows) / len(rows)}
    return out


def score(model, processor, collate, losses, feats, frame, batch_size: int = 64) -> dict:
    """Held-out figures: the pointing heads' share of image attention on the named object, and the boxes the model
    writes by greedy decoding (:func:`greedy_answers`), parsed in ``frame``, against the truth."""
    import torch

    shares, ious, no_box = [], [], 0
    with torch.no_grad():
        for s in range(0, len(feats), batch_size):
            shares += losses(feats[s:s + batch_size])[2]
    for f, text in zip(feats, greedy_answers(model, processor, collate, feats, 32, batch_size)):
        box = frame.parse_box(text, *f["size"])
        if box is None:
            no_box += 1
        ious.append(iou(box, f["box"]) if box is not None else 0.0)
    n = len(feats)
    return {"questions": n, "acc50": sum(v >= 0.5 for v in ious) / n, "mean_iou": sum(ious) / n,
            "no_box": no_box / n, "point_share": sum(shares) / len(shares) if shares else float("nan"),
            "even_share": sum(float((f["target"] > 0).sum()) / f["target"].numel() for f in feats) / n}


if __name__ == "__main__":
    sys.exit(main())
