#!/usr/bin/env bash
# GPU check of stage 4: train the tiny LLaVA on CUDA in bf16 and in 4-bit (QLoRA, bitsandbytes),
# then reload each adapter through VLMInference (the 4-bit one in 4-bit) and ask the four trained
# questions; a third bf16 run is stopped by SIGTERM and finished by running the same command again. Offline, about a minute. The 4-bit run is skipped, saying so, when bitsandbytes is
# neither installed nor installable (an offline machine).
#
#     bash scripts/gpu_check.sh            # PYTHON=... and WORK=... may be set
#
# Prints, per run: device, precision, steps, first/last train loss, eval loss, samples/s,
# padding fraction, and how many of the four trained answers greedy generation reproduces.
# Exits non-zero when there is no CUDA GPU, a run fails, or a loss does not fall.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
WORK=${WORK:-$(mktemp -d -t gpu_check_XXXX)}
echo "== gpu_check: python $PYTHON, work dir $WORK"

"$PYTHON" - <<'EOF'
import torch, transformers, peft
assert torch.cuda.is_available(), "no CUDA GPU visible"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"GPU {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
EOF

# bitsandbytes is a GPU-only dependency, not in requirements.txt.
RUNS="bf16"
if "$PYTHON" -c "import bitsandbytes" 2>/dev/null || "$PYTHON" -m pip install -q bitsandbytes; then
    "$PYTHON" -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)"
    RUNS="bf16 qlora4"
else
    echo "== bitsandbytes is not installed and could not be installed: the 4-bit run is skipped"
fi

# The tiny LLaVA only (the other tiny models are not needed here) and the four-record toy dataset.
"$PYTHON" -c "
from pathlib import Path
from fixtures.tiny_models import build_llava
print('tiny llava:', build_llava(Path('$WORK/models'), seed=0))
"
"$PYTHON" fixtures/toy_data.py "$WORK/data"

COMMON=(--train_data "$WORK/data/toy_llava.json" --val_data "$WORK/data/toy_llava.json"
        --image_dir "$WORK/data/images" --base_model "$WORK/models/llava"
        --use_lora --lora_r 32 --lora_alpha 64 --lora_dropout 0 --learning_rate 5e-3
        --batch_size 4 --max_steps 60 --logging_steps 10 --eval_steps 30 --save_steps 30)

echo "== run 1: bf16 LoRA on CUDA"
"$PYTHON" vlm_training/train_vlm.py "${COMMON[@]}" --bf16 --train_projector --output_dir "$WORK/bf16" \
    2>&1 | grep -v "it/s\]" | tail -n 8

if [[ "$RUNS" == *qlora4* ]]; then
    echo "== run 2: 4-bit QLoRA on CUDA"
    "$PYTHON" vlm_training/train_vlm.py "${COMMON[@]}" --load_in_4bit --gradient_checkpointing \
        --output_dir "$WORK/qlora4" 2>&1 | grep -v "it/s\]" | tail -n 8
fi

echo "== run 3: bf16 LoRA stopped by SIGTERM (preemption), then the same command again"
RESUME=("${COMMON[@]}" --bf16 --output_dir "$WORK/sigterm" --report_to tensorboard --save_total_limit 1)
"$PYTHON" vlm_training/train_vlm.py "${RESUME[@]}" > "$WORK/sigterm.log" 2>&1 &
PID=$!
for _ in $(seq 600); do grep -q "'loss'" "$WORK/sigterm.log" 2>/dev/null && break; sleep 0.1; done
kill -TERM "$PID"
RC=0; wait "$PID" || RC=$?
tail -n 1 "$WORK/sigterm.log"
if [ "$RC" != 143 ]; then echo "  FAIL: SIGTERM gave exit code $RC (expected 143)"; exit 1; fi
"$PYTHON" vlm_training/train_vlm.py "${RESUME[@]}" 2>&1 | grep -E "^continuing from|^trained" || true
"$PYTHON" - "$WORK/sigterm" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
m = json.loads((out / "metrics.json").read_text())
events = list(out.rglob("events.out.tfevents.*"))
ok = m["global_step"] == 60 and json.loads((out / "train_args.json").read_text())["status"] == "complete" and events
print(f"sigterm: resumed to step {m['global_step']}, {len(events)} TensorBoard event file(s):", "OK" if ok else "FAIL")
sys.exit(0 if ok else 1)
PYEOF

echo "== results"
"$PYTHON" - "$WORK" $RUNS <<'EOF'
import json, sys
from pathlib import Path
from vlm_inference.vlm_inference import VLMInference

work = Path(sys.argv[1])
records = json.loads((work / "data" / "toy_llava.json").read_text())
failed = False
for run in sys.argv[2:]:
    out = work / run
    m = json.loads((out / "metrics.json").read_text())
    a = json.loads((out / "train_args.json").read_text())
    first, last = m["train_loss"][0]["loss"], m["train_loss"][-1]["loss"]
    print(f"{run}: device {a['device']}, precision {a['precision']}, 4bit {a['load_in_4bit']}, "
          f"steps {m['global_step']}, train loss {first:.4f} -> {last:.4f}, eval loss {m['final_eval_loss']:.4f}, "
          f"{m['train_samples_per_second']:.1f} samples/s, padding {100 * m['padding_fraction']:.1f}%")
    missing = [f for f in ("adapter_config.json", "adapter_model.safetensors", "prompt_format.json",
                           "train_args.json", "loss.png", "processor_config.json") if not (out / f).is_file()]
    if missing or not last < first:
        print(f"  FAIL: missing {missing} or loss did not fall")
        failed = True
    # Reload through the toolkit's own inference code; the QLoRA adapter on a 4-bit base.
    vlm = VLMInference(str(out), device="cuda", load_in_4bit=a["load_in_4bit"])
    hits = 0
    for r in records:
        q = r["conversations"][0]["value"][len("<image>\n"):]
        answer = vlm.answer_question(work / "data" / "images" / r["image"], q, max_new_tokens=40)
        hits += answer == r["conversations"][1]["value"]
        print(f"  {answer!r}  (trained: {r['conversations'][1]['value']!r})")
    print(f"  {hits}/4 trained answers reproduced")
print("gpu_check:", "FAILED" if failed else "OK")
sys.exit(1 if failed else 0)
EOF
