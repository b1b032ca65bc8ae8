#!/usr/bin/env bash
# `make world-families`: every model family the toolkit trains learns on the world (issue 26). It reuses the
# detectors, annotations and splits of one world run (WORLD_DIR; `make world` runs first when it has none), and
# for each family: takes the family's world VLM (its own class, processor, chat template, image-token layout and box
# frame; world/models/family_vlms/<family>, pretrained to ground phrases in that frame by world/pretrain_grounding.py,
# else built by world/make_family.py), converts the run's annotations with --base_model of that family (its frame),
# trains it with train_vlm.py as a user trains the 7B checkpoint (from a grounding base, with a replay of the pool
# that base was pretrained on mixed in: WORLD_FAMILY_REPLAY), predicts the test questions, asks the guide's API
# (describe_object, "what is in this box?", locate: boxes parsed by the family's own parser, scored in pixels of the
# original image), and scores each beside the majority of the training split and the same model untrained.
# Every family, LLaVA-1.5 included, is trained here the same way, its region questions naming the box by its
# coordinates in the family's frame (the world run's own VLM draws the box: it is not the LLaVA-1.5 row here).
#
# Usage: WORLD_DIR=world_output PYTHON=.venv/bin/python bash world/families.sh
#   WORLD_FAMILIES  the families to train (default: all seven; without llava, its row is the world run's own VLM)
#   WORLD_FAMILY_VLMS  each family's world VLM pretrained to ground phrases (world/pretrain_grounding.py), DIR/<family>
#                   (default world/models/family_vlms; llava there is world/models/vlm_base): the family starts from
#                   it, as world.sh's VLM starts from WORLD_VLM_FROM. Empty, or none there for a family: built by
#                   make_family.py from WORLD_FAMILY_TOWERS / WORLD_FAMILY_LMS as below
#   WORLD_FAMILY_REPLAY  scenes of the pool the families' grounding bases were pretrained on (drawn again here:
#                   make_world.py --seed WORLD_FAMILY_REPLAY_SEED, default 5, as each base's COMMAND draws it) whose
#                   true grounding questions, in the family's frame, are mixed into the fine-tuning's training file, a
#                   replay of what the base learned (default 3000, the whole pool: without it the fine-tuning pulled
#                   the bases' locate down, docs/world.md, session 18; 0: none). Only for a family that starts from
#                   its grounding base (WORLD_FAMILY_VLMS)
#   WORLD_FAMILY_STEPS, WORLD_FAMILY_BATCH  training (default 500 steps of 16: with 200, Qwen2.5-VL from its
#                   grounding base did not learn the scene's surface, docs/world.md)
#   WORLD_FAMILY_LR  (default 3e-4 from a pretrained VLM, which a higher rate makes forget its grounding; else 1e-3)
#   WORLD_FAMILY_LANES  families trained side by side (default 1: one family at a time, on every core)
#   WORLD_README=1  also write the table between the world-families markers of README.md
#   WORLD_FAMILY_TOWERS  the Qwen families' pretrained towers, DIR/<family> (default world/models/towers; empty or
#                   absent: a random tower, trained with the rest)
#   WORLD_FAMILY_LMS  each family's language model pretrained again in its own box frame, DIR/<family> (default
#                   world/models/family_lms; empty or absent: the world language model as transplanted)
#   WORLD_THREADS   torch/OpenMP threads of each lane (default: the machine's cores shared out among the lanes;
#                   0 keeps torch's default)
#   WORLD_TOWER_FROM, WORLD_LM_FROM, WORLD_SEED, WORLD_API_OBJECTS: as in world/world.sh
# Writes WORLD_DIR/families/<family>/ (each a small run folder), WORLD_DIR/families.json and families.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${WORLD_DIR:-world_output}
SEED=${WORLD_SEED:-0}
LANES=${WORLD_FAMILY_LANES:-1}
case "$LANES" in
    ''|*[!0-9]*|0) echo "error: WORLD_FAMILY_LANES: a number of lanes, 1 or more, not '$LANES'" >&2; exit 2 ;;
esac
# Each lane gets its share of the cores. One family at a time on both of a 2-core machine's cores trains it 1.8 times
# as fast as on one, each family in under 10 minutes; two lanes of one core each finish the whole run sooner (2613 s
# against 3194 s), each family in 12-16 minutes (docs/world.md, session 16).
CORES=$(nproc)
THREADS=${WORLD_THREADS:-$(( CORES / LANES > 0 ? CORES / LANES : 1 ))}
if [ "$THREADS" -gt 0 ]; then
    export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
FAMILIES=${WORLD_FAMILIES:-llava vip_llava llava_next llava_onevision qwen2_vl qwen2_5_vl qwen3_vl}
STEPS=${WORLD_FAMILY_STEPS:-500}
BATCH=${WORLD_FAMILY_BATCH:-16}
TOWER_FROM=${WORLD_TOWER_FROM-world/models/tower}
# The Qwen families' own vision towers, pretrained as the CLIP one was (world/models/towers/<family>); a family with
# none here starts from a random tower and trains it with the rest.
FAMILY_TOWERS=${WORLD_FAMILY_TOWERS-world/models/towers}
LM_FROM=${WORLD_LM_FROM-world/models/lm}
# The world language model reads and writes boxes in LLaVA-1.5's frame; each other family's is pretrained again on the
# same text in its own frame and answer format (world/pretrain_lm.py on that family's world model), as a real
# Qwen2.5-VL's language model writes pixel JSON before anyone fine-tunes it.
FAMILY_LMS=${WORLD_FAMILY_LMS-world/models/family_lms}
# Each family's VLM pretrained to ground phrases on a pool of other scenes, as a real checkpoint of each family was
# trained on grounding data before anyone fine-tunes it (docs/world.md, "Every family").
FAMILY_VLMS=${WORLD_FAMILY_VLMS-world/models/family_vlms}
REPLAY=${WORLD_FAMILY_REPLAY:-3000}
REPLAY_SEED=${WORLD_FAMILY_REPLAY_SEED:-5}
case "$REPLAY$REPLAY_SEED" in
    *[!0-9]*) echo "error: WORLD_FAMILY_REPLAY, WORLD_FAMILY_REPLAY_SEED: whole numbers, not '$REPLAY', '$REPLAY_SEED'" >&2
              exit 2 ;;
esac
API_OBJECTS=${WORLD_API_OBJECTS:-300}
QA_TYPES=${WORLD_QA_TYPES:-count surface location region_description region_label grounding}
# The test questions predict.py answers: the table's types. region_description is trained but not asked here (the
# world run scores it, and describe_object through the API): its answers, four times the others' length, set the
# length of every generate batch they fall in, nearly all of them.
TEST_TYPES=${QA_TYPES/region_description/}
if [ "${WORLD_README:-0}" = 1 ] && ! grep -q '^<!-- world-families:begin -->$' README.md; then
    echo "error: WORLD_README=1: README.md has no '<!-- world-families:begin -->' line" >&2
    exit 2
fi
for family in $FAMILIES; do
    case "$family" in
        llava|vip_llava|llava_next|llava_onevision|qwen2_vl|qwen2_5_vl|qwen3_vl) ;;
        *) echo "error: WORLD_FAMILIES: unknown family '$family' (llava vip_llava llava_next llava_onevision" \
                "qwen2_vl qwen2_5_vl qwen3_vl)" >&2; exit 2 ;;
    esac
done

# One world run's detectors, annotations and splits serve every family.
if [ ! -f "$OUT/results.json" ] || [ ! -f "$OUT/test_truth.json" ]; then
    echo "no finished world run in $OUT: running world/world.sh first"
    WORLD_DIR=$OUT PYTHON=$PY bash world/world.sh
fi
W="$OUT/world"
HELD="$W/heldout_images"
start=$(date +%s)
# The replay pool: drawn once for every family (20 s for 3000 scenes), its ground truth as an annotation file; each
# family converts its grounding questions in its own frame.
POOL="$OUT/families/replay_pool"
if [ "$REPLAY" -gt 0 ] && [ -n "$FAMILY_VLMS" ]; then
    rm -rf "$POOL"
    $PY world/make_world.py --out "$POOL" --train_images "$REPLAY" --heldout_images 0 --seed "$REPLAY_SEED"
    $PY world/make_truth.py --coco "$POOL/train.json" --output_file "$POOL/truth.json"
fi

one_family() {  # one_family NAME: the whole path for one family, in OUT/families/NAME (a small run folder)
    local f=$1 D="$OUT/families/$1"
    local t0=$EPOCHREALTIME
    rm -rf "$D" && mkdir -p "$D/eval" "$D/api"
    local lm=() tower=() train_tower=() lr replay=0
    if [ -n "$LM_FROM" ]; then lm=(--language_model_from "$LM_FROM"); fi
    if [ -n "$LM_FROM" ] && [ -n "$FAMILY_LMS" ] && [ -f "$FAMILY_LMS/$f/model.safetensors" ]; then
        lm+=(--family_lm "$FAMILY_LMS/$f")
    fi
    case "$f" in
        qwen*)  # its own tower: the committed pretrained one, else a random one that learns here with the rest
            if [ -n "$FAMILY_TOWERS" ] && [ -f "$FAMILY_TOWERS/$f/config.json" ]; then
                tower=(--vision_tower_from "$FAMILY_TOWERS/$f")
            else
                train_tower=(--train_vision_tower)
            fi ;;
        *) if [ -n "$TOWER_FROM" ]; then tower=(--vision_tower_from "$TOWER_FROM"); fi ;;
    esac
    if [ -n "$FAMILY_VLMS" ] && [ -f "$FAMILY_VLMS/$f/config.json" ]; then
        cp -rL "$FAMILY_VLMS/$f" "$D/base"  # pretrained to ground (its pretrain_info.json says how)
        train_tower=()
        lr=${WORLD_FAMILY_LR:-3e-4}
        if [ "$REPLAY" -gt 0 ]; then replay=1; fi
    else
        $PY world/make_family.py --family "$f" --world "$W" --out "$D/base" --seed "$SEED" "${tower[@]}" "${lm[@]}"
        lr=${WORLD_FAMILY_LR:-1e-3}
    fi
    for split in train val; do  # the world run's splits, rendered in this family's frame
        $PY vlm_training/convert_to_llava_format.py --annotation_file "$OUT/$split.json" \
            --output_file "$D/${split}_llava.json" --qa_types $QA_TYPES --shuffle_turns --seed "$SEED" \
            --base_model "$D/base"
    done
    $PY vlm_training/convert_to_llava_format.py --annotation_file "$OUT/test_truth.json" \
        --output_file "$D/test_llava.json" --qa_types $TEST_TYPES --base_model "$D/base"
    # What the fine-tuning reads: the world's splits, or with the replay one folder holding the world's images and the
    # pool's (images/world, images/pool), the records' paths under them, as LLaVA's own mixes are laid out; the
    # world's records first, then the pool's grounding questions. The baselines stay those of the world's split.
    local train_file="$D/train_llava.json" val_file="$D/val_llava.json" images="$HELD"
    if [ "$replay" = 1 ]; then
        images="$D/images" train_file="$D/train_mix.jsonl" val_file="$D/val_mix.jsonl"
        mkdir -p "$images"
        ln -s "$(cd "$HELD" && pwd)" "$images/world"
        ln -s "$(cd "$POOL/train_images" && pwd)" "$images/pool"
        $PY vlm_training/convert_to_llava_format.py --annotation_file "$OUT/train.json" "$OUT/val.json" \
            --output_file "$D/train_world.jsonl" "$val_file" --qa_types $QA_TYPES --shuffle_turns --seed "$SEED" \
            --base_model "$D/base" --image_prefix world
        $PY vlm_training/convert_to_llava_format.py --annotation_file "$POOL/truth.json" \
            --output_file "$D/replay_llava.jsonl" --qa_types grounding --shuffle_turns --seed "$SEED" \
            --base_model "$D/base" --image_prefix pool
        cat "$D/train_world.jsonl" "$D/replay_llava.jsonl" > "$train_file"
        rm "$D/train_world.jsonl"
    fi
    api_ask() {  # api_ask MODEL_DIR NAME
        $PY world/api_eval.py ask --model_path "$1" --truth "$OUT/test_truth.json" --images_dir "$HELD" \
            --output_file "$D/api/$2.json" --max_objects "$API_OBJECTS" --seed "$SEED"
    }
    $PY vlm_inference/predict.py --model_path "$D/base" --data "$D/test_llava.json" --image_dir "$HELD" \
        --output_file "$D/eval/untrained.jsonl" --batch_size 64 --max_new_tokens 64
    api_ask "$D/base" untrained
    cp "$OUT/api/baselines.json" "$D/api/baselines.json"  # the majority and chance of the API: frame-free
    local t_train=$EPOCHREALTIME
    $PY vlm_training/train_vlm.py --train_data "$train_file" --val_data "$val_file" \
        --image_dir "$images" --output_dir "$D/vlm_model" --base_model "$D/base" "${train_tower[@]}" \
        --system_prompt none --learning_rate "$lr" --weight_decay 0.0 --batch_size "$BATCH" \
        --max_steps "$STEPS" --warmup_ratio 0.03 --max_length 512 --logging_steps 50 --eval_steps "$STEPS" \
        --save_steps 0 --seed "$SEED"
    local t_trained=$EPOCHREALTIME
    $PY vlm_inference/predict.py --model_path "$D/vlm_model" --data "$D/test_llava.json" --image_dir "$HELD" \
        --output_file "$D/eval/model.jsonl" --batch_size 64 --max_new_tokens 64
    api_ask "$D/vlm_model" model
    $PY world/report.py baselines --train "$D/train_llava.json" --questions "$D/eval/model.jsonl" \
        --out_dir "$D/eval" --seed "$SEED"
    local who
    for who in model untrained majority chance; do
        $PY vlm_inference/evaluate.py --predictions "$D/eval/$who.jsonl" --output_file "$D/eval/$who.json" > /dev/null
    done
    awk -v a="$t0" -v b="$t_train" -v c="$t_trained" -v d="$EPOCHREALTIME" \
        'BEGIN { printf "vlm_train\t%.1f\nwall\t%.1f\n", c - b, d - a }' > "$D/timings.tsv"
    printf '\n== %s done in %.0fs\n' "$f" "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')"
}

# Lanes of families side by side (THREADS each); each lane's log is OUT/families/logs/lane<K>.log.
mkdir -p "$OUT/families/logs"
read -r -a names <<< "$FAMILIES"
pids=()
stop_lanes() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap stop_lanes EXIT
for (( lane = 0; lane < LANES; lane++ )); do
    (
        for (( i = lane; i < ${#names[@]}; i += LANES )); do
            printf '\n== family %s\n' "${names[$i]}"
            one_family "${names[$i]}"
        done
    ) > "$OUT/families/logs/lane$lane.log" 2>&1 &
    pids+=($!)
done
status=0
for (( lane = 0; lane < LANES; lane++ )); do
    if ! wait "${pids[$lane]}"; then
        echo "error: lane $lane failed; its log: $OUT/families/logs/lane$lane.log" >&2
        tail -20 "$OUT/families/logs/lane$lane.log" >&2
        status=1
    fi
done
trap - EXIT
[ "$status" = 0 ] || exit 1

README_ARGS=()
if [ "${WORLD_README:-0}" = 1 ]; then
    README_ARGS=(--readme README.md --command "make world-families")
fi
printf '\n== families (held-out test scenes, scored against the ground truth)\n'
$PY world/report.py families --run_dir "$OUT" --seconds "$(( $(date +%s) - start ))" \
    ${README_ARGS[@]+"${README_ARGS[@]}"}
printf '\nfamilies run finished in %ss: %s, %s\n' "$(( $(date +%s) - start ))" "$OUT/families.json" "$OUT/families.md"
