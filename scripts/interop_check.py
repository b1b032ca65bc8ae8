"""The data and the checks of scripts/interop.sh (``make interop``): our converted data in LLaMA-Factory and ms-swift.

    python scripts/interop_check.py prepare OUT    # tiny LLaVA + two off-square images + converted exports
    python scripts/interop_check.py compare OUT    # (in the interop venv) their tokens of one record vs ours

``prepare`` (the project's venv) saves the fixtures' tiny LLaVA as a hub-format folder (``OUT/model/llava``:
its CLIP processor resizes and centre-crops, as llava-1.5's does), draws two images that are not square with an
object at the edge that a centre crop cuts away, writes their annotation file and runs
``convert_to_llava_format.py`` with ``--llamafactory_dir``, ``--swift_dir`` and ``--square_images_dir``.

``compare`` (the venv with llamafactory and ms-swift) tokenizes the first record three ways, the way each
trainer's own data pipeline does (ours: vlm_training/llava_data.py; LLaMA-Factory: its template and mm plugin;
ms-swift: ``template.encode``) and prints, for each, the text, the input ids and the supervised positions,
and where they differ from ours.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: fixtures/ is not installed

IGNORE = -100
# Two images that are not square, each with its object against the edge that a centre crop cuts away.
IMAGES = [("wide.png", (128, 80), [2.0, 24.0, 30.0, 64.0], "bottle"),
          ("tall.png", (80, 128), [20.0, 100.0, 60.0, 126.0], "can")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("prepare", "compare"), help="prepare: data and model; compare: tokenization")
    p.add_argument("out", metavar="OUT", help="working folder (model/, images/, train.json, lf/, swift/, ...)")
    p.add_argument("--trainer", choices=("llamafactory", "swift"), action="append", default=None,
                   help="compare: the trainer(s) to compare with (each needs its package; default both)")
    p.add_argument("--hide_ours", action="store_true", help="compare: do not print our own tokenization")
    return p.parse_args(argv)


def annotation() -> dict:
    from vlm_core import prompts
    images = []
    for name, (w, h), box, label in IMAGES:
        obj = {"id": 0, "label": label, "bbox": box, "score": 0.9, "sources": ["manual"], "description": ""}
        images.append({"image": name, "width": w, "height": h, "caption": "", "objects": [obj], "qa": [
            {"question": prompts.COUNT, "answer": prompts.count_answer(1), "type": "count", "object_ids": []},
            {"question": prompts.REGION_LABEL.format(box="<box:0>"), "answer": label, "type": "region_label",
             "object_ids": [0]},
            {"question": prompts.GROUNDING.format(text=f"the {label}"), "answer": "<box:0>", "type": "grounding",
             "object_ids": [0]}]})
    return {"images": images, "skipped": [], "meta": {}}


def prepare(out: Path) -> int:
    from PIL import Image, ImageDraw

    from fixtures.tiny_models import build_llava

    model = out / "model" / "llava"
    if not (model / "config.json").is_file():
        build_llava(out / "model", seed=0)
    for name, size, box, _ in IMAGES:
        image = Image.new("RGB", size, (40, 120, 40))
        ImageDraw.Draw(image).rectangle([round(v) for v in box], fill=(220, 30, 30))
        (out / "images").mkdir(parents=True, exist_ok=True)
        image.save(out / "images" / name)
    (out / "train.json").write_text(json.dumps(annotation(), indent=1))
    convert = Path(__file__).resolve().parents[1] / "vlm_training" / "convert_to_llava_format.py"
    return subprocess.run([sys.executable, str(convert), "--annotation_file", str(out / "train.json"),
                           "--output_file", str(out / "train_llava.json"), "--base_model", str(model),
                           "--image_dir", str(out / "images"), "--square_images_dir", str(out / "images_square"),
                           "--llamafactory_dir", str(out / "lf"), "--swift_dir", str(out / "swift")]).returncode


# --------------------------------------------------------------------------- compare
def ours(out: Path, processor) -> tuple[list[int], list[int]]:
    """Input ids and labels of the first record as this toolkit's training builds them."""
    from vlm_core.prompts import PromptFormat
    from vlm_training.llava_data import TokenLayout, build_examples

    fmt = PromptFormat.from_chat_template(processor).with_system_prompt("auto")
    layout = TokenLayout(processor, fmt)
    records = json.loads((out / "train_llava.json").read_text())[:1]
    examples, _ = build_examples(records, out / "train_llava.json", out / "images_square", layout, 2048)
    ex = examples[0]
    n = layout.num_image_tokens
    i = ex.input_ids.index(layout.image_token_id)
    return (ex.input_ids[:i] + [layout.image_token_id] * n + ex.input_ids[i + 1:],
            ex.labels[:i] + [IGNORE] * n + ex.labels[i + 1:])


def llamafactory(out: Path, model: Path) -> tuple[list[int], list[int]]:
    """The same record through LLaMA-Factory's llava template and plugin (what its SFT preprocessing does)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.model import load_tokenizer

    margs = ModelArguments(model_name_or_path=str(model))
    tok_mod = load_tokenizer(margs)
    dargs = DataArguments(template="llava", cutoff_len=2048)
    template = get_template_and_fix_tokenizer(tok_mod["tokenizer"], dargs)
    rec = json.loads((out / "lf" / "train_llava.json").read_text())[0]
    prompt = [{"role": m["role"], "content": m["content"]} for m in rec["messages"][:-1]]
    response = [{"role": "assistant", "content": rec["messages"][-1]["content"]}]
    proc = SupervisedDatasetProcessor(template=template, tokenizer=tok_mod["tokenizer"],
                                      processor=tok_mod["processor"], data_args=dargs)
    images = [str(out / "images_square" / p) for p in rec["images"]]
    ids, labels = proc._encode_data_example(prompt=prompt, response=response, system=rec.get("system", ""),
                                            tools="", images=images, videos=[], audios=[])
    return ids, labels


def swift(out: Path, model: Path) -> tuple[list[int], list[int]]:
    """The same record through ms-swift's llava1_5_hf template (``template.encode``, what its SFT does)."""
    from swift import get_processor, get_template
    processor = get_processor(str(model), model_type="llava1_5_hf")
    template = get_template(processor, template_type="llava1_5_hf")
    template.set_mode("train")
    rec = json.loads((out / "swift" / "train_llava.jsonl").read_text().splitlines()[0])
    encoded = template.encode(rec)
    return list(encoded["input_ids"]), list(encoded["labels"])


def show(name: str, tok, ids: list[int], labels: list[int], ref: tuple[list[int], list[int]] | None) -> None:
    image_id = tok.convert_tokens_to_ids("<image>")
    squeezed, prev = [], None
    for t in ids:  # the image's tokens shown once, with their count
        if t == image_id and prev == image_id:
            continue
        squeezed.append(t)
        prev = t
    text = tok.decode(squeezed, skip_special_tokens=False)
    supervised = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE], skip_special_tokens=False)
    print(f"--- {name}: {len(ids)} tokens ({ids.count(image_id)} image tokens), "
          f"{sum(lab != IGNORE for lab in labels)} supervised")
    print(f"text:       {text!r}")
    print(f"supervised: {supervised!r}")
    if ref is None:
        return
    if ids == ref[0] and labels == ref[1]:
        print("same input ids and labels as ours")
        return
    k = next((i for i, (a, b) in enumerate(zip(ids, ref[0])) if a != b), min(len(ids), len(ref[0])))
    print(f"input ids: {'same' if ids == ref[0] else f'differ from ours at token {k}'}: theirs "
          f"{tok.convert_ids_to_tokens(ids[max(0, k - 2):k + 4])} ours {tok.convert_ids_to_tokens(ref[0][max(0, k - 2):k + 4])}")
    mine = {t for t, lab in zip(ref[0], ref[1]) if lab != IGNORE}
    theirs = {t for t, lab in zip(ids, labels) if lab != IGNORE}
    print(f"label mask: {'same' if [lab != IGNORE for lab in labels] == [lab != IGNORE for lab in ref[1]] else 'differs'}"
          f"; supervised tokens only theirs {sorted(tok.convert_ids_to_tokens(list(theirs - mine)))}, "
          f"only ours {sorted(tok.convert_ids_to_tokens(list(mine - theirs)))}")


def compare(out: Path, trainers: list[str], hide_ours: bool) -> int:
    from transformers import AutoProcessor
    model = out / "model" / "llava"
    processor = AutoProcessor.from_pretrained(model)
    tok = processor.tokenizer
    ref = ours(out, processor)
    if not hide_ours:
        show("ours (vlm_training/llava_data.py)", tok, *ref, None)
    for key, name, fn in (("llamafactory", "LLaMA-Factory 0.9.5 (template llava)", llamafactory),
                          ("swift", "ms-swift 4.6.0 (template llava1_5_hf)", swift)):
        if key not in trainers:
            continue
        try:
            show(name, tok, *fn(out, model), ref)
        except Exception as e:  # one trainer's failure must not hide the other's result
            print(f"--- {name}: failed: {type(e).__name__}: {e}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.step == "prepare":
        return prepare(out)
    return compare(out, args.trainer or ["llamafactory", "swift"], args.hide_ours)


if __name__ == "__main__":
    sys.exit(main())
