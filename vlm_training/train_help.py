"""train_vlm.py's short ``--help``: the toolkit's flags and the Trainer options people reach for, on one screen.

Kept apart from train_vlm.py, and free of torch and transformers, so ``--help`` answers in a moment: importing
transformers' TrainingArguments, which the full parser is built from, takes ~10 s. ``--help_all`` prints that
full parser's help (every TrainingArguments option). tests/test_cli.py checks that every flag named here exists
with the default written here, and that every flag of the toolkit's own appears here or in PLUMBING.
"""
from __future__ import annotations

import sys
from typing import Sequence

from vlm_core.cli import wants_help

# The toolkit's own fields (defaults it sets for the Trainer's sake) that a user has no reason to touch:
# only --help_all shows them.
PLUMBING = ("remove_unused_columns", "label_names", "ddp_find_unused_parameters", "logging_first_step",
            "train_sampling_strategy", "disable_tqdm", "fp32", "group_by_length")

BRIEF_HELP = """\
usage: train_vlm.py [CONFIG.yaml] --train_data FILE --image_dir DIR --output_dir DIR [FLAG ...]

Stage 4: fine-tune LLaVA-1.5 (or LLaVA-NeXT, LLaVA-OneVision, Qwen2/2.5/3-VL) on LLaVA
conversation files with LoRA / QLoRA or fully. A config file (JSON or YAML, keys = flag names)
may give any flags; flags on the command line override it. Every transformers TrainingArguments
option is a flag too: --help_all lists them all.

  python vlm_training/train_vlm.py --train_data train_llava.json --val_data val_llava.json \\
      --image_dir data/images --output_dir ./vlm_model --use_lora --batch_size 4 --num_epochs 3
  python vlm_training/train_vlm.py train.yaml --learning_rate 1e-4

required:
  --train_data FILE         training file in LLaVA format (stage 3 output; .json or .jsonl)
  --image_dir DIR           folder the records' image paths are relative to (alias --images_dir)
  --output_dir DIR          where the adapter/model, processor, metrics and checkpoints go

data:
  --val_data FILE           validation file in LLaVA format
  --max_length N            longest example in tokens, image tokens included (default: 2048)

model:
  --base_model NAME         hub id or local folder, the one the data was converted for
                            (default: llava-hf/llava-1.5-7b-hf)
  --use_lora                train LoRA adapters (else: full fine-tune of language model + projector)
  --lora_r N                LoRA rank (default: 128)
  --lora_alpha N            LoRA alpha (default: 256)
  --lora_dropout X          LoRA dropout (default: 0.05)
  --train_projector         with --use_lora, also train the projector fully, at --projector_lr
  --projector_lr X          projector's learning rate (default: 2e-5 with --use_lora, else
                            --learning_rate)
  --train_vision_tower      also train the vision tower fully
  --vision_tower_lr X       vision tower's learning rate (default: --learning_rate)
  --load_in_4bit            QLoRA: base model in 4-bit NF4 (with --use_lora; CUDA + bitsandbytes)
  --load_in_8bit            the base model in 8-bit (with --use_lora; CUDA + bitsandbytes)
  --merge_lora              also save the base model with the adapter merged in, OUTPUT_DIR/merged
  --system_prompt TEXT      none, llava_v1, auto or any text (default: auto)
  --box_prompt {text,visual,both}
                            how a question names a box; as the data was converted (default: text)

training (defaults: LLaVA-1.5's LoRA recipe):
  --num_train_epochs X      passes over the training data; alias --num_epochs (default: 1.0)
  --max_steps N             train this many steps, whatever the epochs (default: -1)
  --per_device_train_batch_size N
                            examples per device per step; alias --batch_size (default: 4)
  --gradient_accumulation_steps N
                            steps whose gradients add up to one optimizer step (default: 1)
  --learning_rate X         peak learning rate (default: 0.0002)
  --lr_scheduler_type NAME  learning-rate schedule: cosine, linear, constant, ... (default: cosine)
  --warmup_steps X          warmup: a fraction of the steps if < 1, else steps; alias --warmup_ratio
                            (default: 0.03)
  --weight_decay X          AdamW weight decay (default: 0.0)
  --precision {auto,fp32,bf16,fp16}
                            alias --dtype; --bf16, --fp16, --fp32 say the same; auto: bf16 where
                            the GPU has it, fp16 on other GPUs, fp32 on the CPU (default: auto)
  --gradient_checkpointing  recompute activations in the backward pass: less memory, slower
  --seed N                  seed of the initialisation and the data order (default: 42)
  --resume_from_checkpoint PATH
                            a checkpoint-N folder or 'latest' (without it: an interrupted run in
                            --output_dir continues)
  --no_group_by_length      draw batches at random (default: batch examples of similar length)
  --deepspeed FILE          DeepSpeed config (JSON); several GPUs: accelerate launch / torchrun

evaluation (with --val_data), saving and logging:
  --eval_strategy {auto,no,steps,epoch}
                            auto: every --eval_steps steps if given, else every epoch
                            (default: auto)
  --eval_steps N            evaluate every N steps
  --per_device_eval_batch_size N
                            examples per evaluation step (default: the training batch size)
  --eval_generate           also answer a sample of --val_data and log evaluate.py's scores
  --eval_generate_samples N with --eval_generate: how many questions (default: 200)
  --max_new_tokens N        with --eval_generate: most tokens per answer (default: 128)
  --metric_for_best_model NAME
                            which evaluation is best: loss (the default), or an eval_generate score
  --load_best_model_at_end  save the best evaluation's weights as the model
  --early_stopping_patience N
                            stop after N evaluations without improvement
  --save_steps N            write a checkpoint every N steps, 0: none (default: 500)
  --save_total_limit N      keep at most N checkpoints (default: 2)
  --logging_steps N         log the training loss every N steps (default: 10)
  --report_to NAME          none, tensorboard, wandb, mlflow, all (default: none)
  --run_name NAME           the run's name in those trackers

  -h, --help                this help
  --help_all                every flag, all of transformers' TrainingArguments included
"""


def answer_brief_help(argv: Sequence[str]) -> None:
    """Print the short help and exit 0 when ``argv`` asks for it (-h/--help, not --help_all)."""
    if wants_help(argv) == "brief":
        sys.stdout.write(BRIEF_HELP)
        sys.exit(0)
