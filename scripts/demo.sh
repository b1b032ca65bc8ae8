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
step "0. scenes of the synthetic world (no download)"
# The detectors, the captioner and the VLM are the small world-trained models committed in world/models/ (see
# world/models/README.md for the commands that reproduce them): the demo annotates scenes they never saw.
$PY world/make_world.py --out "$OUT/world" --train_images 0 --heldout_images "${DEMO_SCENES:-40}" --seed 1 --workers 1
IMAGES="$OUT/world/heldout_images"
W=world/models
# The question types the world VLM was taught (world/models/vlm/train_args.json), and how its region questions name
# their box (its prompt_format.json: "visual", the box drawn on the image): the fine-tune and the questions use the same.
QA_TYPES="count surface location region_description region_label grounding"
BOX_PROMPT=$($PY -c "import json, sys; print(json.load(open(sys.argv[1])).get('box_prompt', 'text'))" "$W/vlm/prompt_format.json")

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
    --train_file "$OUT/train.json" --val_file "$OUT/val.json" --train_ratio 0.7 --val_ratio 0.1

step "3. convert to the LLaVA conversation format"
# The three splits in one run: the note on images other trainers read differently is printed once.
$PY vlm_training/convert_to_llava_format.py --annotation_file "$OUT/train.json" "$OUT/val.json" "$OUT/test.json" \
    --output_file "$OUT/train_llava.json" "$OUT/val_llava.json" "$OUT/test_llava.json" --qa_types $QA_TYPES \
    --shuffle_turns --box_prompt "$BOX_PROMPT"
# The test scenes' questions again, with the answers of the world's ground truth (not the detectors'): what the
# predictions are scored against.
$PY world/make_truth.py --coco "$OUT/world/heldout.json" --only "$OUT/test.json" --output_file "$OUT/test_truth.json"
$PY vlm_training/convert_to_llava_format.py --annotation_file "$OUT/test_truth.json" \
    --output_file "$OUT/test_truth_llava.json" --qa_types $QA_TYPES --box_prompt "$BOX_PROMPT"

step "4. fine-tune the world LLaVA with LoRA on the demo's scenes (a minute on the CPU)"
$PY vlm_training/train_vlm.py --train_data "$OUT/train_llava.json" --val_data "$OUT/val_llava.json" \
    --output_dir "$OUT/vlm_model" --base_model "$W/vlm" --image_dir "$IMAGES" --system_prompt none \
    --use_lora --lora_r 16 --lora_alpha 32 --learning_rate 2e-4 --batch_size 8 --max_steps 40 --max_length 512 \
    --logging_steps 10 --eval_steps 20 --save_steps 20 --eval_generate --max_new_tokens 64 --box_prompt "$BOX_PROMPT"

step "5. infer: batch prediction on the test split"
$PY vlm_inference/predict.py --model_path "$OUT/vlm_model" --base_model "$W/vlm" \
    --data "$OUT/test_truth_llava.json" --image_dir "$IMAGES" --output_file "$OUT/predictions.jsonl" \
    --batch_size 16 --max_new_tokens 64

step "6. review gallery of the annotations"
$PY vlm_annotation/visualize.py --annotation_file "$OUT/annotations.json" --images_dir "$IMAGES" \
    --output_dir "$OUT/review"

step "7. evaluate the predictions, beside the majority answer of the training split"
$PY vlm_inference/evaluate.py --predictions "$OUT/predictions.jsonl" --output_file "$OUT/metrics.json"
$PY world/report.py baselines --train "$OUT/train_llava.json" --questions "$OUT/predictions.jsonl" \
    --out_dir "$OUT/baselines"
$PY vlm_inference/evaluate.py --predictions "$OUT/baselines/majority.jsonl" --output_file "$OUT/majority.json" \
    --report "$OUT/baselines/majority.md" > /dev/null
$PY vlm_inference/visualize_predictions.py --predictions "$OUT/predictions.jsonl" --image_dir "$IMAGES" \
    --output_dir "$OUT/prediction_review"

step "8. the guide's API on the first three held-out scenes, next to the truth"
$PY scripts/demo_answers.py --model_path "$OUT/vlm_model" --base_model "$W/vlm" --truth "$OUT/test_truth.json" \
    --images_dir "$IMAGES" --model_metrics "$OUT/metrics.json" --majority_metrics "$OUT/majority.json"

printf '\ndemo finished in %ss: metrics in %s, report %s, label metrics %s, review gallery %s, predictions gallery %s\n' \
    "$(( $(date +%s) - start ))" "$OUT/metrics.json" "$OUT/report.md" "$OUT/label_metrics.md" "$OUT/review/index.html" \
    "$OUT/prediction_review/index.html"
