"""Stage 4: fine-tune LLaVA-1.5 on LLaVA conversation files with LoRA / QLoRA (or fully).

    python vlm_training/train_vlm.py --train_data train_llava.json --val_data val_llava.json \\
        --output_dir ./vlm_model --base_model llava-hf/llava-1.5-7b-hf --image_dir data/images \\
        --use_lora --batch_size 4 --num_epochs 3

Several GPUs: ``accelerate launch vlm_training/train_vlm.py ...`` or ``torchrun --nproc_per_node N
vlm_training/train_vlm.py ...``; DeepSpeed: add ``--deepspeed ds_config.json``. QLoRA: add
``--load_in_4bit`` (CUDA + bitsandbytes).

Defaults follow LLaVA-1.5's LoRA recipe: r 128, alpha 256, lr 2e-4 (projector 2e-5), cosine
schedule, 3% warmup, bf16 where the GPU supports it. LoRA goes on the language model's linear
layers only (never the CLIP vision tower); the vision tower stays frozen; ``--train_projector``
trains the projector fully. Without ``--use_lora`` the language model and the projector are
fine-tuned fully.

Images are padded to a square with the processor's image mean (never centre-cropped); each
conversation is laid out by the prompt format derived from the processor's chat template, with
EOS after every answer; only answers and their EOS are supervised.

``--output_dir`` receives: the adapter (or the full model), the processor, prompt_format.json,
train_args.json, metrics.json, loss.png, and checkpoint-N/ folders (``--resume_from_checkpoint
latest`` continues from the newest one). ``--merge_lora`` also writes ``merged/``.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import sys
import time
from pathlib import Path

from vlm_annotation.io_utils import InputError, write_json_atomic
from vlm_annotation.prompts import PromptFormat
from vlm_annotation.runtime import (
    check_seed,
    is_within,
    report_input_errors,
    require_model,
    require_output_dir,
    resolve_device,
)

DEFAULT_BASE_MODEL = "llava-hf/llava-1.5-7b-hf"
# LoRA on the language model only: a plain suffix list would also hit the CLIP tower's q_proj.
LORA_TARGET_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
PROJECTOR = "multi_modal_projector"
VISION_TOWER = "vision_tower"
MERGED_DIR = "merged"  # --merge_lora writes the merged model here, inside --output_dir
TRAIN_ARGS_FILE = "train_args.json"  # marks a folder this script wrote


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--train_data", required=True, help="training file in LLaVA format (stage 3 output)")
    data.add_argument("--val_data", default=None, help="validation file in LLaVA format (optional)")
    data.add_argument("--image_dir", required=True, help="folder the records' 'image' paths are relative to")
    data.add_argument("--output_dir", required=True, help="where the adapter/model, processor, prompt format, "
                                                          "metrics and checkpoints are written")
    data.add_argument("--max_length", type=int, default=2048,
                      help="longest example in tokens, image tokens included (default 2048); an over-long "
                           "record loses its last turns, or is dropped if its first turn does not fit")
    data.add_argument("--no_group_by_length", dest="group_by_length", action="store_false",
                      help="sample batches at random instead of grouping examples of similar length "
                           "(grouping is on by default: less padding)")
    data.add_argument("--dataloader_num_workers", type=int, default=0,
                      help="worker processes that load and preprocess images (default 0: in the main process)")

    model = p.add_argument_group("model")
    model.add_argument("--base_model", default=DEFAULT_BASE_MODEL,
                       help=f"LLaVA checkpoint: hub id or local folder (default {DEFAULT_BASE_MODEL})")
    model.add_argument("--use_lora", action="store_true",
                       help="train LoRA adapters on the language model (else: full fine-tune of the language "
                            "model and the projector)")
    model.add_argument("--lora_r", type=int, default=128, help="LoRA rank (default 128, LLaVA-1.5)")
    model.add_argument("--lora_alpha", type=int, default=256, help="LoRA alpha (default 256, LLaVA-1.5)")
    model.add_argument("--lora_dropout", type=float, default=0.05, help="LoRA dropout (default 0.05)")
    model.add_argument("--train_projector", action="store_true",
                       help="with --use_lora, also train the multimodal projector fully (at --projector_lr)")
    model.add_argument("--projector_lr", type=float, default=2e-5,
                       help="learning rate of the projector when it is trained (default 2e-5, LLaVA-1.5)")
    model.add_argument("--load_in_4bit", action="store_true", help="QLoRA: load the base model in 4-bit NF4 "
                                                                   "(needs --use_lora, CUDA and bitsandbytes)")
    model.add_argument("--load_in_8bit", action="store_true", help="load the base model in 8-bit "
                                                                   "(needs --use_lora, CUDA and bitsandbytes)")
    model.add_argument("--merge_lora", action="store_true",
                       help="after training also save the base model with the adapter merged into "
                            "OUTPUT_DIR/merged (needs --use_lora)")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch_size", type=int, default=4, help="examples per device per step (default 4)")
    opt.add_argument("--num_epochs", type=float, default=1.0, help="passes over the training data (default 1)")
    opt.add_argument("--max_steps", type=int, default=None,
                     help="stop after this many optimizer steps (overrides --num_epochs)")
    opt.add_argument("--learning_rate", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    opt.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    opt.add_argument("--warmup_ratio", type=float, default=0.03,
                     help="fraction of the steps with linear warmup before the cosine decay (default 0.03)")
    opt.add_argument("--gradient_accumulation_steps", type=int, default=1,
                     help="batches accumulated per optimizer step (default 1)")
    opt.add_argument("--gradient_checkpointing", action="store_true",
                     help="recompute activations in the backward pass (less memory, ~30%% slower)")
    opt.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                     help="auto (default): bf16 where the GPU supports it, else fp16 on a GPU, fp32 on the CPU")
    opt.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="same as --precision bf16")
    opt.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="same as --precision fp16")
    opt.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="same as --precision fp32")
    opt.add_argument("--deepspeed", default=None,
                     help="DeepSpeed config JSON passed to the Trainer (an 'optimizer' section in it replaces "
                          "the AdamW with the projector's own learning rate)")
    opt.add_argument("--seed", type=int, default=42, help="random seed (default 42)")

    run = p.add_argument_group("logging and checkpoints")
    run.add_argument("--logging_steps", type=int, default=10, help="log the training loss every N steps (default 10)")
    run.add_argument("--eval_steps", type=int, default=None,
                     help="evaluate on --val_data every N steps (default: at the end of every epoch)")
    run.add_argument("--save_steps", type=int, default=500,
                     help="write a checkpoint every N steps (default 500; 0: no checkpoints)")
    run.add_argument("--save_total_limit", type=int, default=2,
                     help="keep at most this many checkpoints (default 2)")
    run.add_argument("--resume_from_checkpoint", default=None,
                     help="a checkpoint folder to continue from, or 'latest' for the newest checkpoint-N "
                          "in --output_dir (a fresh start when there is none)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model, in one place; raises InputError naming the flag."""
    for flag in ("train_data", "val_data"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            raise InputError(f"--{flag}: file not found: {path}")
    if not Path(args.image_dir).is_dir():
        raise InputError(f"--image_dir: directory not found: {args.image_dir}")
    args.base_model = require_model(args.base_model, "--base_model")
    out = require_output_dir(args.output_dir, "--output_dir", {"--image_dir": args.image_dir})
    base = Path(args.base_model)
    if base.is_dir() and (is_within(out, base) or is_within(base, out)):
        raise InputError(f"--output_dir: {out} overlaps --base_model {base}; write the fine-tuned model elsewhere")
    if out.is_dir() and any(out.iterdir()) and not (out / TRAIN_ARGS_FILE).is_file():
        # Not a folder this script wrote: never delete or overwrite someone else's files.
        if any((out / n).exists() for n in _FULL_MODEL_FILES + _ADAPTER_FILES):
            raise InputError(f"--output_dir: {out} holds a model that train_vlm.py did not write; "
                             "choose an empty or new folder")
    check_seed(args.seed)
    for flag in ("learning_rate", "projector_lr", "weight_decay"):
        if not math.isfinite(getattr(args, flag)):
            raise InputError(f"--{flag} must be a finite number, got {getattr(args, flag)}")
    if args.weight_decay < 0:
        raise InputError(f"--weight_decay must be >= 0, got {args.weight_decay}")
    positive = ["batch_size", "lora_r", "lora_alpha", "gradient_accumulation_steps", "logging_steps", "max_length"]
    for flag in positive:
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    for flag in ("max_steps", "eval_steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.save_steps < 0 or args.dataloader_num_workers < 0:
        raise InputError("--save_steps and --dataloader_num_workers must be >= 0")
    if args.num_epochs <= 0:
        raise InputError(f"--num_epochs must be > 0, got {args.num_epochs}")
    if args.learning_rate <= 0 or args.projector_lr <= 0:
        raise InputError("--learning_rate and --projector_lr must be > 0")
    if not 0 <= args.warmup_ratio < 1:
        raise InputError(f"--warmup_ratio must be in [0, 1), got {args.warmup_ratio}")
    if not 0 <= args.lora_dropout < 1:
        raise InputError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    if args.load_in_4bit and args.load_in_8bit:
        raise InputError("--load_in_4bit and --load_in_8bit exclude each other")
    if (args.load_in_4bit or args.load_in_8bit) and not args.use_lora:
        raise InputError("--load_in_4bit/--load_in_8bit train a quantized model through LoRA: add --use_lora")
    if args.merge_lora and not args.use_lora:
        raise InputError("--merge_lora needs --use_lora")
    if args.deepspeed is not None:
        if not Path(args.deepspeed).is_file():
            raise InputError(f"--deepspeed: config file not found: {args.deepspeed}")
        if importlib.util.find_spec("deepspeed") is None:
            raise InputError("--deepspeed needs the deepspeed package: pip install deepspeed")
    if args.resume_from_checkpoint not in (None, "latest"):
        if not Path(args.resume_from_checkpoint).is_dir():
            raise InputError(f"--resume_from_checkpoint: checkpoint folder not found: {args.resume_from_checkpoint}")
        if not (Path(args.resume_from_checkpoint) / "trainer_state.json").is_file():
            raise InputError(f"--resume_from_checkpoint: {args.resume_from_checkpoint} is not a Trainer checkpoint "
                             "(no trainer_state.json); give a checkpoint-N folder or 'latest'")


def resolve_precision(requested: str, device: str) -> str:
    """bf16 / fp16 / fp32 for this device; an impossible request is an InputError."""
    import torch
    if requested == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp16" and device != "cuda":
        raise InputError(f"--fp16 needs a CUDA GPU (training runs on {device}); use --bf16 or --fp32")
    if requested == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("--bf16: this GPU does not support bfloat16; use --fp16")
    return requested


def check_quantization(args: argparse.Namespace, device: str) -> None:
    if not (args.load_in_4bit or args.load_in_8bit):
        return
    flag = "--load_in_4bit" if args.load_in_4bit else "--load_in_8bit"
    if device != "cuda":
        raise InputError(f"{flag} (QLoRA) needs a CUDA GPU; none is visible (train without it on {device})")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError(f"{flag} needs the bitsandbytes package: pip install bitsandbytes")


def resolve_checkpoint(args: argparse.Namespace) -> str | None:
    if args.resume_from_checkpoint != "latest":
        return args.resume_from_checkpoint
    from transformers.trainer_utils import get_last_checkpoint
    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if last is None:
        print(f"--resume_from_checkpoint latest: no checkpoint in {args.output_dir}; starting from scratch",
              flush=True)
    return last


# --------------------------------------------------------------------------- model
def load_base_model(name: str, precision: str, args: argparse.Namespace | None = None, quantize: bool = True):
    """LlavaForConditionalGeneration in the training dtype, quantized when asked."""
    import torch
    from transformers import LlavaForConditionalGeneration
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    kwargs = {"dtype": dtype}
    if quantize and args is not None and (args.load_in_4bit or args.load_in_8bit):
        from transformers import BitsAndBytesConfig
        # The vision tower, projector and head stay unquantized (small, and precision matters there).
        skip = [VISION_TOWER, PROJECTOR, "lm_head"]
        if args.load_in_4bit:
            qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skip)
        else:
            qcfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        kwargs["quantization_config"] = qcfg
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    try:
        return LlavaForConditionalGeneration.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(f"--base_model {name}: cannot load a LLaVA model: {str(e).splitlines()[0]}") from None


def prepare_trainable(model, args: argparse.Namespace):
    """LoRA (+ projector) or full fine-tune of language model + projector; the vision tower is frozen."""
    import torch
    if args.use_lora:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        if args.load_in_4bit or args.load_in_8bit:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=args.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                            target_modules=LORA_TARGET_REGEX, bias="none", task_type="CAUSAL_LM",
                            modules_to_save=[PROJECTOR] if args.train_projector else None)
        model = get_peft_model(model, config)
        # Trainable weights in fp32 (AMP's grad scaler refuses fp16 gradients; optimizer states stay exact).
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    else:
        model.requires_grad_(True)
    for name, param in model.named_parameters():
        if f"{VISION_TOWER}." in name:
            param.requires_grad_(False)
    return model


def count_parameters(model) -> tuple[int, int]:
    # Under DeepSpeed ZeRO-3 the weights are partitioned and numel() is 0: ds_numel is the real size.
    def size(p):
        return getattr(p, "ds_numel", 0) or p.numel()
    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    total = sum(size(p) for p in model.parameters())
    return trainable, total


# Weights of the other mode that an earlier run may have left in --output_dir: inference
# looks for an adapter first, so a stale one would shadow a new full model (and vice versa).
_FULL_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                     "pytorch_model.bin", "pytorch_model.bin.index.json")
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def remove_stale_model_files(out: Path, use_lora: bool, merge_lora: bool) -> list[str]:
    """Delete what an earlier run of the other mode (or an old merged model) left in ``out``."""
    removed = []
    names = _FULL_MODEL_FILES if use_lora else _ADAPTER_FILES
    candidates = [out / n for n in names]
    if use_lora:
        candidates += sorted(out.glob("model-*-of-*.safetensors"))
    for path in candidates:
        if path.is_file():
            path.unlink()
            removed.append(path.name)
    if not merge_lora and (out / MERGED_DIR).is_dir():
        shutil.rmtree(out / MERGED_DIR)
        removed.append(MERGED_DIR + "/")
    return removed


# --------------------------------------------------------------------------- trainer
def make_trainer_class():
    """The Trainer with precomputed-length grouping, a projector learning rate and padding counts."""
    import torch
    from transformers import Trainer

    from vlm_training.llava_data import SeededLengthGroupedSampler

    class VLMTrainer(Trainer):
        def __init__(self, *a, projector_lr: float | None = None, **kw):
            super().__init__(*a, **kw)
            self.projector_lr = projector_lr
            self.token_counts = {"tokens": 0, "padding": 0}

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
                # Lengths are known from tokenization: no image is read to group by length.
                return SeededLengthGroupedSampler(
                    dataset.lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                    seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset):
            if self.args.world_size <= 1:
                return torch.utils.data.SequentialSampler(eval_dataset)
            return None

        def create_optimizer(self, model=None):
            opt_model = self.model if model is None else model
            if self.optimizer is not None:
                return self.optimizer
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list] = {}
            for name, param in opt_model.named_parameters():
                if param.requires_grad:
                    is_proj = self.projector_lr is not None and PROJECTOR in name
                    groups.setdefault((is_proj, name in decay), []).append(param)
            param_groups = []
            # Language-model groups first: the Trainer logs the learning rate of group 0.
            for (is_proj, has_decay), params in sorted(groups.items()):
                group = {"params": params, "weight_decay": self.args.weight_decay if has_decay else 0.0}
                if is_proj:
                    group["lr"] = self.projector_lr
                param_groups.append(group)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
            return self.optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and "attention_mask" in inputs:
                mask = inputs["attention_mask"]
                self.token_counts["tokens"] += int(mask.numel())
                self.token_counts["padding"] += int(mask.numel() - mask.sum().item())
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return VLMTrainer


# --------------------------------------------------------------------------- outputs
def collect_metrics(log_history: list[dict]) -> dict:
    train = [{"step": e["step"], "loss": e["loss"], "learning_rate": e.get("learning_rate"),
              "epoch": e.get("epoch")} for e in log_history if "loss" in e and "step" in e]
    evals = [{"step": e["step"], "loss": e["eval_loss"], "epoch": e.get("epoch")}
             for e in log_history if "eval_loss" in e]
    return {"train_loss": train, "eval_loss": evals}


def plot_loss(metrics: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    if metrics["train_loss"]:
        ax.plot([e["step"] for e in metrics["train_loss"]], [e["loss"] for e in metrics["train_loss"]],
                label="train loss", marker="." if len(metrics["train_loss"]) < 50 else None)
    if metrics["eval_loss"]:
        ax.plot([e["step"] for e in metrics["eval_loss"]], [e["loss"] for e in metrics["eval_loss"]],
                label="eval loss", marker="o" if len(metrics["eval_loss"]) < 30 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title("LLaVA fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def save_merged(args: argparse.Namespace, precision: str, processor, fmt: PromptFormat) -> Path:
    """Reload the base model unquantized, merge the saved adapter into it and save it as ``merged/``."""
    from peft import PeftModel
    merge_precision = "fp32" if precision == "fp32" else precision
    base = load_base_model(args.base_model, merge_precision, quantize=False)
    merged = PeftModel.from_pretrained(base, args.output_dir).merge_and_unload()
    out = Path(args.output_dir) / MERGED_DIR
    merged.save_pretrained(out)
    processor.save_pretrained(out)
    fmt.save(out)
    return out


# --------------------------------------------------------------------------- main
def train(args: argparse.Namespace) -> dict:
    """Run one training job described by ``args`` (as parse_args returns it); return its metrics."""
    check_args(args)
    device = resolve_device("auto")
    precision = resolve_precision(args.precision, device)
    check_quantization(args, device)
    checkpoint = resolve_checkpoint(args) if args.resume_from_checkpoint else None

    import torch
    import transformers
    from transformers import AutoProcessor, TrainingArguments
    from transformers import set_seed as hf_set_seed

    from vlm_training.llava_data import LlavaCollator, TokenLayout, load_llava_dataset

    try:
        processor = AutoProcessor.from_pretrained(args.base_model)
    except (OSError, ValueError) as e:
        raise InputError(f"--base_model {args.base_model}: cannot load its processor: "
                         f"{str(e).splitlines()[0]}") from None
    fmt = PromptFormat.from_chat_template(processor)
    layout = TokenLayout(processor, fmt)
    train_set, train_stats = load_llava_dataset(args.train_data, args.image_dir, layout, args.max_length,
                                                "--train_data")
    val_set = val_stats = None
    if args.val_data:
        val_set, val_stats = load_llava_dataset(args.val_data, args.image_dir, layout, args.max_length,
                                                "--val_data")

    has_eval = val_set is not None
    # Created before the model is loaded: under DeepSpeed ZeRO-3 from_pretrained must see it.
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        num_train_epochs=args.num_epochs,
        max_steps=args.max_steps if args.max_steps else -1,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        logging_steps=args.logging_steps,
        logging_first_step=True,
        eval_strategy=("steps" if args.eval_steps else "epoch") if has_eval else "no",
        eval_steps=args.eval_steps,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        save_total_limit=args.save_total_limit,
        seed=args.seed,
        data_seed=args.seed,
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        dataloader_num_workers=args.dataloader_num_workers,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # every trainable weight takes part in every forward pass
        label_names=["labels"],
        report_to="none",
        deepspeed=args.deepspeed,
        disable_tqdm=False,
        # Only named when used: the flag is being renamed in transformers 5.x (activation_checkpointing).
        **({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
           if args.gradient_checkpointing else {}),
    )
    hf_set_seed(args.seed)
    # A full fine-tune in fp16 keeps fp32 master weights (AMP cannot step fp16 weights).
    load_precision = "fp32" if precision == "fp16" and not args.use_lora else precision
    model = load_base_model(args.base_model, load_precision, args)
    model.config.use_cache = False
    if hasattr(model.config, "text_config"):
        model.config.text_config.use_cache = False
    model = prepare_trainable(model, args)
    trainable, total = count_parameters(model)

    trainer_cls = make_trainer_class()
    projector_trained = (not args.use_lora) or args.train_projector
    trainer = trainer_cls(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=val_set,
        data_collator=LlavaCollator(layout.pad_token_id, padding_side="right"),
        processing_class=processor, projector_lr=args.projector_lr if projector_trained else None)
    main_process = trainer.is_world_process_zero()
    if main_process:
        print(train_stats.summary("train data"), flush=True)
        if val_stats:
            print(val_stats.summary("val data"), flush=True)
        mode = f"LoRA r={args.lora_r}" if args.use_lora else "full fine-tune"
        quant = " 4-bit" if args.load_in_4bit else " 8-bit" if args.load_in_8bit else ""
        print(f"training {mode}{quant} on {device} in {precision}: {trainable:,} of {total:,} parameters "
              f"trainable ({100 * trainable / max(total, 1):.2f}%)", flush=True)

    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.perf_counter() - start
    # The final eval, unless --eval_steps already evaluated the last step (the same numbers twice).
    last_eval = next((e for e in reversed(trainer.state.log_history)
                      if "eval_loss" in e and e.get("step") == trainer.state.global_step), None)
    final_eval = (last_eval or trainer.evaluate()) if has_eval else {}
    if main_process:
        removed = remove_stale_model_files(Path(args.output_dir), args.use_lora, args.merge_lora)
        if removed:
            print(f"removed an earlier run's {', '.join(removed)} from {args.output_dir}", flush=True)
    trainer.save_model(args.output_dir)

    metrics = collect_metrics(trainer.state.log_history)
    counts = trainer.token_counts
    metrics.update({
        "final_train_loss": metrics["train_loss"][-1]["loss"] if metrics["train_loss"] else None,
        "final_eval_loss": final_eval.get("eval_loss"),
        "train_loss_mean": result.training_loss,
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "train_runtime_s": result.metrics.get("train_runtime", wall),
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "train_steps_per_second": result.metrics.get("train_steps_per_second"),
        "padding_fraction": counts["padding"] / counts["tokens"] if counts["tokens"] else None,
        "resumed_from": checkpoint,
        "train_data": train_stats.__dict__ | {"dropped_ids": train_stats.dropped_ids[:20]},
        "val_data": (val_stats.__dict__ | {"dropped_ids": val_stats.dropped_ids[:20]}) if val_stats else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
    })
    if main_process:
        out = Path(args.output_dir)
        processor.save_pretrained(out)
        fmt.save(out)
        resolved = dict(vars(args))
        resolved.update({"precision": precision, "device": device, "world_size": training_args.world_size,
                         "lora_target_modules": LORA_TARGET_REGEX if args.use_lora else None,
                         "num_image_tokens": layout.num_image_tokens, "resumed_from": checkpoint,
                         "versions": {"torch": torch.__version__, "transformers": transformers.__version__}})
        write_json_atomic(out / TRAIN_ARGS_FILE, resolved)
        write_json_atomic(out / "metrics.json", metrics)
        plot_loss(metrics, out / "loss.png")
        if args.merge_lora:
            del trainer, model
            merged = save_merged(args, precision, processor, fmt)
            print(f"merged model written to {merged}", flush=True)
        eval_part = f", eval loss {metrics['final_eval_loss']:.4f}" if metrics["final_eval_loss"] is not None else ""
        sps = metrics["train_samples_per_second"]
        print(f"trained {metrics['global_step']} steps ({metrics['epochs']:.2f} epochs) on "
              f"{train_stats.examples} examples in {wall:.1f}s ({sps or 0:.2f} samples/s); "
              f"final train loss {metrics['final_train_loss']:.4f}{eval_part} -> {out}", flush=True)
    return metrics


@report_input_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
