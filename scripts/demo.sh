#!/usr/bin/env bash
# The whole toolkit end to end, offline, on tiny models: what `make demo` runs (after set-up).
# Usage: DEMO_DIR=demo_output PYTHON=.venv/bin/python bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_DIR:-demo_output}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
# One thread per process unless the caller set it: on a busy CPU more threads per process only contend.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
start=$(date +%s)
step() { printf '\n== %s\n' "$*"; }

rm -rf "$OUT"
mkdir -p "$OUT"
step "0. scenes of the synthetic world, and a tiny LLaVA to fine-tune (no download)"
# The detectors and the captioner are the small world-trained models committed in world/models/
# (see world/models/README.md for the commands that reproduce them); the LLaVA is built here.
$PY fixtures/make_tiny_models.py --out "$OUT/models"
$PY world/make_world.py --out "$OUT/world" --train_images 0 --heldout_images 12 --seed 1 --workers 1
IMAGES="$OUT/world/heldout_images"
M="$OUT/models"
W=world/models

step "1. annotate: YOLO + RT-DETR ensemble, BLIP descriptions, Q&A pairs"
$PY vlm_annotation/data_annotation.py --images_dir "$IMAGES" --output_file "$OUT/annotations.json" \
    --yolo_model "$W/yolo/yolo.pt" --detr_model "$W/rtdetr/m" --detr_processor "$W/rtdetr/p" \
    --captioner_model "$W/blip" --conf_threshold 0.05 --fusion_conf_threshold 0.4 --iou_threshold 0.4 \
    --agreement_conf_threshold 0.25 --imgsz 128 --max_det 10 --batch_size 16 --keep_detector_boxes

step "1b. the labels against the ground truth: the ensemble versus each detector, the Q&A true of each scene, and the fusion settings"
$PY vlm_annotation/evaluate_annotations.py --annotation_file "$OUT/annotations.json" \
    --ground_truth "$OUT/world/heldout.json" --output_file "$OUT/label_metrics.json" --sweep

step "1c. labels in and out: import the ground truth (COCO), export the annotations (COCO, YOLO)"
$PY vlm_annotation/import_labels.py --coco "$OUT/world/heldout.json" --images_dir "$IMAGES" \
    --output_file "$OUT/labels_annotations.json" --captioner_model "$W/blip" --max_images 4
$PY vlm_annotation/export_annotations.py --annotation_file "$OUT/annotations.json" --format coco \
    --output_file "$OUT/annotations_coco.json"
$PY vlm_annotation/export_annotations.py --annotation_file "$OUT/annotations.json" --format yolo \
    --output_dir "$OUT/yolo_dataset" --images_dir "$IMAGES"

step "2. split by image"
$PY vlm_training/split_data.py --input_file "$OUT/annotations.json" \
    --train_file "$OUT/train.json" --val_file "$OUT/val.json" --train_ratio 0.8 --val_ratio 0.1

step "3. convert to the LLaVA conversation format"
# The three splits in one run: the note on images other trainers read differently is printed once.
$PY vlm_training/convert_to_llava_format.py --annotation_file "$OUT/train.json" "$OUT/val.json" "$OUT/test.json" \
    --output_file "$OUT/train_llava.json" "$OUT/val_llava.json" "$OUT/test_llava.json" --max_turns 8

step "4. fine-tune the tiny LLaVA with LoRA (a few steps on the CPU)"
$PY vlm_training/train_vlm.py --train_data "$OUT/train_llava.json" --val_data "$OUT/val_llava.json" \
    --output_dir "$OUT/vlm_model" --base_model "$M/llava" --image_dir "$IMAGES" \
    --use_lora --lora_r 32 --lora_alpha 64 --learning_rate 5e-3 --batch_size 4 --max_steps 150 \
    --logging_steps 25 --eval_steps 75 --save_steps 75 --eval_generate --max_new_tokens 32

step "5. infer: batch prediction on the test split"
$PY vlm_inference/predict.py --model_path "$OUT/vlm_model" --base_model "$M/llava" \
    --data "$OUT/test_llava.json" --image_dir "$IMAGES" --output_file "$OUT/predictions.jsonl" \
    --batch_size 8 --max_new_tokens 32

step "5. infer: VLMInference.describe_object and answer_question"
$PY - "$OUT" "$M/llava" "$IMAGES" <<'PYEOF'
import json, sys
from vlm_inference.vlm_inference import VLMInference

out, base, images = sys.argv[1:4]
# An object of the test split (never trained on), or of any split when the test image has none.
records = json.load(open(f"{out}/test.json"))["images"] + json.load(open(f"{out}/annotations.json"))["images"]
record = next(r for r in records if r["objects"])
obj = record["objects"][0]
vlm = VLMInference(model_path=f"{out}/vlm_model", base_model=base)
image = f"{images}/{record['image']}"
print(f"image: {record['image']}, object {obj['id']} ({obj['label']}) at {obj['bbox']}")
print("describe_object ->", vlm.describe_object(image, bbox=obj["bbox"], label=obj["label"], max_new_tokens=60))
print("answer_question('How many objects are there?') ->", vlm.answer_question(image, "How many objects are there?", max_new_tokens=20))
print(f"(reference: {len(record['objects'])} objects; annotation: {obj['description']!r})")
print("(the tiny LLaVA trained for a minute on 10 scenes: expect noise; `make world` shows what training buys)")
PYEOF

step "6. review gallery of the annotations"
$PY vlm_annotation/visualize.py --annotation_file "$OUT/annotations.json" --images_dir "$IMAGES" \
    --output_dir "$OUT/review"

step "7. evaluate the predictions"
$PY vlm_inference/evaluate.py --predictions "$OUT/predictions.jsonl" --output_file "$OUT/metrics.json"
$PY vlm_inference/visualize_predictions.py --predictions "$OUT/predictions.jsonl" --image_dir "$IMAGES" \
    --output_dir "$OUT/prediction_review"

printf '\ndemo finished in %ss: metrics in %s, report %s, label metrics %s, review gallery %s, predictions gallery %s\n' \
    "$(( $(date +%s) - start ))" "$OUT/metrics.json" "$OUT/report.md" "$OUT/label_metrics.md" "$OUT/review/index.html" \
    "$OUT/prediction_review/index.html"
