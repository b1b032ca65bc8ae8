#!/usr/bin/env bash
# Our converted data in LLaMA-Factory and ms-swift, for real (make interop; docs/interop.md):
#
#   bash scripts/interop.sh [OUT]        # default OUT: interop_output/
#
# 1. Two venvs beside the project's (LLaMA-Factory 0.9.5 pins datasets<=4.0.0, ms-swift 4.6.0 needs a later one),
#    created once under .venv-interop/ (ignored; INTEROP_VENVS=DIR puts them elsewhere), torch 2.14.1 in each.
# 2. The fixtures' tiny LLaVA saved as a hub-format folder, two off-square images with an object at the edge, their
#    annotation file, converted with --llamafactory_dir, --swift_dir and --square_images_dir (the project's venv).
# 3. Two LoRA training steps in each trainer on that data, on the CPU, offline; their loss lines are printed.
# 4. One record tokenized by our training, by LLaMA-Factory and by ms-swift: text, input ids, label mask.
# Needs the network only for step 1 (pip); everything after runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=$(realpath -m "${1:-interop_output}")
VENVS=$(realpath -m "${INTEROP_VENVS:-.venv-interop}")
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MODELSCOPE_OFFLINE=1 USE_HF=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0

step() { printf '\n== %s\n' "$*"; }

venv() {  # venv NAME PACKAGES...: create $VENVS/NAME once, with torch 2.14.1 and the packages
    local dir=$VENVS/$1; shift
    if [ ! -f "$dir/.complete" ]; then
        rm -rf "$dir"
        python3 -m venv "$dir"
        "$dir/bin/pip" install -q "torch==2.14.1" "$@" > "$dir.pip.log" 2>&1 || { tail -20 "$dir.pip.log"; exit 1; }
        touch "$dir/.complete"
    fi
}

step "1. venvs: $VENVS/llamafactory (llamafactory==0.9.5), $VENVS/swift (ms-swift==4.6.0)"
venv llamafactory "llamafactory==0.9.5" orjson   # orjson: our vlm_core, for the comparison
venv swift "ms-swift==4.6.0" orjson
LF=$VENVS/llamafactory/bin
SW=$VENVS/swift/bin
"$LF/python" -c "import llamafactory, transformers, torch; print('llamafactory', llamafactory.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
"$SW/python" -c "import swift, transformers, datasets; print('ms-swift', swift.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__)"

step "2. tiny LLaVA, images, converted data -> $OUT"
rm -rf "$OUT/runs"
mkdir -p "$OUT/runs"
$PY scripts/interop_check.py prepare "$OUT"

losses() { grep -o "{'loss': [^}]*}" "$1" || { tail -20 "$1"; return 1; }; }

step "3a. LLaMA-Factory: 2 LoRA steps (template llava, media_dir = the square images)"
cat > "$OUT/runs/llamafactory.yaml" <<EOF
model_name_or_path: $OUT/model/llava
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
lora_rank: 8
dataset: train_llava
dataset_dir: $OUT/lf
media_dir: $OUT/images_square
template: llava
cutoff_len: 1024
overwrite_cache: true
preprocessing_num_workers: 1
dataloader_num_workers: 0
output_dir: $OUT/runs/llamafactory
logging_steps: 1
save_strategy: "no"
report_to: none
per_device_train_batch_size: 2
learning_rate: 1.0e-3
max_steps: 2
use_cpu: true
seed: 0
EOF
(cd "$OUT/runs" && "$LF/llamafactory-cli" train llamafactory.yaml) > "$OUT/runs/llamafactory.log" 2>&1 \
    || { tail -30 "$OUT/runs/llamafactory.log"; exit 1; }
losses "$OUT/runs/llamafactory.log"

step "3b. ms-swift: 2 LoRA steps (template llava1_5_hf, grounding objects, the square images)"
(cd "$OUT/runs" && "$SW/swift" sft --model "$OUT/model/llava" --model_type llava1_5_hf --template llava1_5_hf \
    --dataset "$OUT/swift/train_llava.jsonl" --tuner_type lora --lora_rank 8 --max_steps 2 \
    --per_device_train_batch_size 2 --learning_rate 1e-3 --logging_steps 1 --save_strategy no --report_to none \
    --output_dir "$OUT/runs/swift" --dataloader_num_workers 0 --dataset_num_proc 1 --split_dataset_ratio 0 \
    --torch_dtype float32 --seed 0) > "$OUT/runs/swift.log" 2>&1 || { tail -30 "$OUT/runs/swift.log"; exit 1; }
losses "$OUT/runs/swift.log"

step "4. one record tokenized by each (ours vs theirs: input ids, label mask)"
quiet() { grep -v '^\[\|Warning\|warnings.warn\|^$' || true; }
PYTHONPATH=$ROOT "$LF/python" scripts/interop_check.py compare "$OUT" --trainer llamafactory 2>&1 | quiet
PYTHONPATH=$ROOT "$SW/python" scripts/interop_check.py compare "$OUT" --trainer swift --hide_ours 2>&1 | quiet
echo
echo "interop: done (logs in $OUT/runs)"
