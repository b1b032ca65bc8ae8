"""Stage 4: fine-tune LLaVA-1.5 (or LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL) on LLaVA
conversation files with LoRA / QLoRA (or fully).

    python vlm_training/train_vlm.py --train_data train_llava.json --val_data val_llava.json \\
        --output_dir ./vlm_model --base_model llava-hf/llava-1.5-7b-hf --image_dir data/images \\
        --use_lora --batch_size 4 --num_epochs 3

Flags are parsed with transformers' HfArgumentParser, as in its run_*.py examples and LLaVA's
train.py: every TrainingArguments option is a flag (--report_to tensorboard, --lr_scheduler_type,
--optim, --save_total_limit, --gradient_checkpointing, --deepspeed ds_config.json, ...). Several GPUs:
``accelerate launch vlm_training/train_vlm.py ...`` or ``torchrun --nproc_per_node N ...``. QLoRA:
``--load_in_4bit`` (CUDA + bitsandbytes). Training files may be JSON arrays or JSONL.

A config file may come first, as in transformers' examples and LLaMA-Factory: ``train_vlm.py train.yaml
--learning_rate 1e-4`` (JSON or YAML, keys = flag names; flags after it override it). ``--help`` shows the
toolkit's flags and the Trainer's common ones (vlm_training/train_help.py), ``--help_all`` every flag.

Defaults follow LLaVA-1.5's LoRA recipe: r 128, alpha 256, lr 2e-4 (projector 2e-5), cosine
schedule, 3% warmup, bf16 where the GPU supports it, LLaVA v1's system prompt. LoRA goes on the
language model's linear layers only; ``--train_projector`` trains the projector fully;
``--train_vision_tower`` trains the CLIP vision tower fully (else frozen). Without ``--use_lora``
the language model and the projector are fine-tuned fully. Images are padded to a square with the
processor's image mean; only answers and their EOS are supervised.

Other families (``--base_model`` decides, see vlm_core/families.py) are loaded through their own
transformers class; their chat template lays the turns out, answers are supervised through the family's
end-of-turn token, images keep their aspect ratio and take as many image tokens as the processor gives
them, and the boxes in the data must be rendered for the family's frame (``convert_to_llava_format.py
--base_model`` with the same value; other data is refused). The frame is saved as box_frame.json.

``--output_dir`` receives the adapter (or full model), the processor, prompt_format.json,
train_args.json, metrics.json, loss.png and checkpoint-N/ folders; ``--merge_lora`` adds merged/.
Ctrl-C or SIGTERM saves a checkpoint at the current step; running the same command again continues
an interrupted run from its newest complete checkpoint (``--resume_from_checkpoint latest`` or a
checkpoint folder says so explicitly).

``--box_prompt visual`` (or ``both``) trains on data converted with the same flag: each record's boxes are
drawn on its image (vlm_core/images.py, as inference draws them) and the questions name them by colour;
prompt_format.json records it, so VLMInference asks that model with drawn boxes without being told.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import importlib.util
import json
import math
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

# --help answers before torch and transformers load (~10 s): run as a script, or as the vlm-train command (whose
# wrapper imports this module, then calls main).
if __name__ == "__main__" or Path(sys.argv[0]).stem == "vlm-train":
    from vlm_training.train_help import answer_brief_help
    answer_brief_help(sys.argv[1:])

import torch
from transformers import HfArgumentParser, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy, SchedulerType

from vlm_core import cli, families
from vlm_core.generation import DEFAULT_MAX_NEW_TOKENS
from vlm_core.io_utils import InputError, write_json_atomic
from vlm_core.llava_format import refuse_other_stage_file
from vlm_core.model_dir import (
    ADAPTER_FILES,
    FULL_MODEL_FILES,
    LOSS_PLOT_FILE,
    MERGED_DIR,
    METRICS_FILE,
    SAVING_MARKER,
    TRAIN_ARGS_FILE,
    move_into,
    remove_stale_model_files,
)
from vlm_core.prompts import BOX_PROMPT_HELP, BOX_PROMPTS, SYSTEM_PROMPT_HELP, PromptFormat, resolve_system_prompt
from vlm_core.runtime import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    check_seed,
    is_within,
    plural,
    precision_name,
    report_input_errors,
    require_model,
    require_output_dir,
    resolve_device,
    resolve_dtype,
    single_writer,
)
from vlm_training.generation_eval import (
    SAMPLES_FILE,
    GenerationEvaluator,
    check_metric_for_best_model,
    sample_questions,
    save_samples,
)
from vlm_training.train_help import answer_brief_help
from vlm_training.vlm_trainer import (
    ResumableEarlyStopping,
    RunTotals,
    SaveFrame,
    SaveSamples,
    SealCheckpoint,
    StopOnSignal,
    VLMTrainer,
    checkpoint_problem,
    collect_metrics,
    count_parameters,
    plot_loss,
    resolve_checkpoint,
    saved_state,
)

PROJECTOR = "multi_modal_projector"
VISION_TOWER = "vision_tower"
_TMP_FINAL = ".final.tmp"
_FULL_DISK_FREE = 1 << 20   # below this many free bytes after a failed write, the disk was full


# --------------------------------------------------------------------------- arguments
LORA_PROJECTOR_LR = 2e-5  # LLaVA-1.5's scripts/v1_5/finetune_lora.sh: --mm_projector_lr 2e-5


@dataclass
class ModelArguments:
    _argument_group_name = "model"
    base_model: str = field(default=families.DEFAULT_BASE_MODEL, metadata={
        "help": "base model, hub id or local folder: LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL "
                "or Qwen3-VL (the same value convert_to_llava_format.py got)"})
    use_lora: bool = field(default=False, metadata={
        "help": "train LoRA adapters on the language model (else: full fine-tune of language model and projector)"})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank (LLaVA-1.5: 128)"})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha (LLaVA-1.5: 256)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    train_projector: bool = field(default=False, metadata={
        "help": "with --use_lora, also train the multimodal projector fully (at --projector_lr)"})
    projector_lr: float | None = field(default=None, metadata={
        "help": "learning rate of the projector when it is trained (default: with --use_lora 2e-5, LLaVA-1.5's "
                "LoRA recipe; in a full fine-tune --learning_rate, as LLaVA's own mm_projector_lr)"})
    train_vision_tower: bool = field(default=False, metadata={
        "help": "also train the CLIP vision tower fully (as LLaVA-NeXT and LLaMA-Factory offer); needed for a "
                "model that starts from random weights"})
    vision_tower_lr: float | None = field(default=None, metadata={
        "help": "learning rate of the vision tower with --train_vision_tower (default: --learning_rate)"})
    load_in_4bit: bool = field(default=False, metadata={
        "help": "QLoRA: load the base model in 4-bit NF4 (needs --use_lora, CUDA and bitsandbytes)"})
    load_in_8bit: bool = field(default=False, metadata={
        "help": "load the base model in 8-bit (needs --use_lora, CUDA and bitsandbytes)"})
    merge_lora: bool = field(default=False, metadata={
        "help": "after training also save the base model with the adapter merged into OUTPUT_DIR/merged"})
    system_prompt: str = field(default="auto", metadata={"help": SYSTEM_PROMPT_HELP})
    box_prompt: str = field(default="text", metadata={
        "choices": list(BOX_PROMPTS),
        "help": BOX_PROMPT_HELP + "; the data must be converted with the same value (its drawn boxes travel in "
                "each record), and it is saved in prompt_format.json so inference asks the same way"})

    def __post_init__(self):
        self.base_model = require_model(self.base_model, "--base_model")
        try:  # not a field: the run record and checkpoint settings stay as they were
            self.family = families.detect_family(self.base_model)
        except families.FamilyError as e:
            raise InputError(f"--base_model: {e}") from None
        for flag in ("lora_r", "lora_alpha"):
            if getattr(self, flag) < 1:
                raise InputError(f"--{flag} must be >= 1, got {getattr(self, flag)}")
        if self.projector_lr is None and self.use_lora:
            # LLaVA-1.5's LoRA script passes --mm_projector_lr 2e-5 beside lr 2e-4; its full fine-tune leaves
            # mm_projector_lr unset, so the projector trains at the learning rate of the rest (None here).
            self.projector_lr = LORA_PROJECTOR_LR
        for flag in ("projector_lr", "vision_tower_lr"):
            lr = getattr(self, flag)
            if lr is not None and not (math.isfinite(lr) and lr > 0):
                raise InputError(f"--{flag} must be a finite number > 0, got {lr}")
        if not 0 <= self.lora_dropout < 1:
            raise InputError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.load_in_4bit and self.load_in_8bit:
            raise InputError("--load_in_4bit and --load_in_8bit exclude each other")
        if (self.load_in_4bit or self.load_in_8bit) and not self.use_lora:
            raise InputError("--load_in_4bit/--load_in_8bit train a quantized model through LoRA: add --use_lora")
        if self.merge_lora and not self.use_lora:
            raise InputError("--merge_lora needs --use_lora")
        try:
            resolve_system_prompt(self.system_prompt)
        except ValueError as e:
            raise InputError(f"--system_prompt: {e}") from None


@dataclass
class DataArguments:
    _argument_group_name = "data"
    train_data: str = field(metadata={"help": "training file in LLaVA format (stage 3 output; .json or .jsonl)"})
    image_dir: str = field(metadata={"aliases": ["--images_dir"],
                                     "help": "folder the records' 'image' paths are relative to"})
    val_data: str | None = field(default=None, metadata={"help": "validation file in LLaVA format (optional)"})
    max_length: int = field(default=2048, metadata={
        "help": "longest example in tokens, image tokens included; an over-long record loses its last turns, "
                "or is dropped if its first turn does not fit"})

    def __post_init__(self):
        for flag in ("train_data", "val_data"):
            path = getattr(self, flag)
            if path is not None and not Path(path).is_file():
                raise InputError(f"--{flag}: file not found: {path}")
            if path is not None:
                refuse_other_stage_file(path)  # an annotation file: the message names the conversion
        if not Path(self.image_dir).is_dir():
            raise InputError(f"--image_dir: directory not found: {self.image_dir}")
        if self.max_length < 1:
            raise InputError(f"--max_length must be >= 1, got {self.max_length}")


@dataclass
class VLMTrainingArguments(TrainingArguments):
    """TrainingArguments with LLaVA-1.5's LoRA recipe as defaults and the toolkit's flag names as aliases."""
    _argument_group_name = "training (any transformers TrainingArguments option; defaults: LLaVA-1.5 LoRA recipe)"
    output_dir: str | None = field(default=None, metadata={
        "required": True, "help": "where the adapter/model, processor, prompt format, metrics and checkpoints go"})
    per_device_train_batch_size: int = field(default=4, metadata={
        "aliases": ["--batch_size"], "help": "examples per device per step (alias --batch_size)"})
    per_device_eval_batch_size: int | None = field(default=None, metadata={
        "help": "examples per device per evaluation step (default: the training batch size)"})
    num_train_epochs: float = field(default=1.0, metadata={
        "aliases": ["--num_epochs"], "help": "passes over the training data (alias --num_epochs)"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (LLaVA-1.5 LoRA: 2e-4)"})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": "learning-rate schedule"})
    warmup_steps: float = field(default=0.03, metadata={
        "aliases": ["--warmup_ratio"],
        "help": "linear warmup: a float in [0, 1) is a fraction of the steps, else a number of steps"})
    logging_steps: float = field(default=10, metadata={"help": "log the training loss every N steps"})
    logging_first_step: bool = field(default=True, metadata={"help": "log the loss of the first step too"})
    eval_strategy: str = field(default="auto", metadata={
        "choices": ["auto", "no", "steps", "epoch"],
        "help": "auto: with --val_data, every --eval_steps steps if given, else every epoch"})
    save_steps: float = field(default=500, metadata={"help": "write a checkpoint every N steps (0: none)"})
    save_total_limit: int | None = field(default=2, metadata={"help": "keep at most this many checkpoints"})
    train_sampling_strategy: str = field(default="group_by_length", metadata={
        "choices": ["random", "sequential", "group_by_length"], "help": "order of the training examples"})
    group_by_length: bool = field(default=True, metadata={
        "help": "batch examples of similar length (less padding); --no_group_by_length samples at random"})
    precision: str = field(default="auto", metadata={
        "aliases": ["--dtype"], "help": "auto (bf16 where the GPU supports it, fp16 on other GPUs, fp32 on the "
                                        "CPU), fp32, bf16 or fp16; --bf16/--fp16/--fp32 mean the same"})
    fp32: bool = field(default=False, metadata={"help": "same as --precision fp32"})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "a checkpoint folder, or 'latest' (the newest complete checkpoint-N in --output_dir); without it "
                "an interrupted run in --output_dir is continued"})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "drop the batch keys the model's forward does not name (off: the collator's keys are all inputs)"})
    label_names: list[str] | None = field(default_factory=lambda: ["labels"], metadata={
        "help": "batch keys that hold the labels"})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={
        "help": "DistributedDataParallel's find_unused_parameters (off: every trainable weight takes part in every "
                "forward pass)"})
    disable_tqdm: bool | None = field(default=None, metadata={
        "help": "turn the progress bars off (default: off when stderr is not a terminal, e.g. redirected to a log "
                "file, where each log is printed as one plain line instead)"})
    eval_generate: bool = field(default=False, metadata={
        "help": "at every evaluation also generate answers to a sample of --val_data (as predict.py asks them) and "
                "log evaluate.py's scores per question type: eval_<type>_<metric> (eval_grounding_acc50, "
                "eval_count_count_exact, ...), eval_unparsed_boxes, eval_generate_seconds"})
    eval_generate_samples: int = field(default=200, metadata={
        "help": "with --eval_generate: how many questions (turns) are asked, drawn once with --seed, an equal share "
                "per question type; bounds the time each evaluation takes"})
    max_new_tokens: int = field(default=DEFAULT_MAX_NEW_TOKENS, metadata={
        "help": "with --eval_generate: most tokens per generated answer (predict.py's flag of the same name)"})
    early_stopping_patience: int | None = field(default=None, metadata={
        "help": "stop when --metric_for_best_model (default eval_loss) has not improved for this many evaluations "
                "(transformers' EarlyStoppingCallback)"})

    def __post_init__(self):
        if self.output_dir is None:
            raise InputError("--output_dir is required")
        try:
            self.precision = precision_name(self.precision)
        except argparse.ArgumentTypeError as e:  # the one list of names: runtime.PRECISIONS
            raise InputError(f"--precision: {e}") from None
        named = [p for p in ("bf16", "fp16", "fp32") if getattr(self, p)]
        if len(named) > 1 or (named and self.precision not in ("auto", named[0])):
            raise InputError(f"--precision {self.precision} and --{' --'.join(named)} disagree; give one")
        self.precision = named[0] if named else self.precision
        self.device_name = resolve_device("auto")
        if self.precision == "fp16" and self.device_name != "cuda":
            raise InputError(f"--fp16 needs a CUDA GPU (training runs on {self.device_name}); use --bf16 or --fp32")
        if self.precision == "bf16" and self.device_name == "cuda" and not torch.cuda.is_bf16_supported():
            raise InputError("--bf16: this GPU does not support bfloat16; use --fp16")
        dtype = resolve_dtype(self.precision, self.device_name)  # auto: what this device does best
        self.precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        self.bf16, self.fp16, self.fp32 = (self.precision == p for p in ("bf16", "fp16", "fp32"))
        self.use_cpu = self.device_name == "cpu"
        check_seed(self.seed)
        for flag in ("learning_rate", "weight_decay"):
            if not math.isfinite(getattr(self, flag)) or getattr(self, flag) < 0:
                raise InputError(f"--{flag} must be a finite number >= 0, got {getattr(self, flag)}")
        for flag in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps",
                     "eval_generate_samples", "max_new_tokens"):
            if getattr(self, flag) < 1:
                raise InputError(f"--{flag} must be >= 1, got {getattr(self, flag)}")
        if self.learning_rate == 0 or self.num_train_epochs <= 0 or self.save_steps < 0 or self.warmup_steps < 0:
            raise InputError("--learning_rate and --num_train_epochs must be > 0, --save_steps and "
                             "--warmup_steps >= 0")
        if (self.max_steps != -1 and self.max_steps < 1) or (self.eval_steps is not None and self.eval_steps <= 0):
            raise InputError("--max_steps and --eval_steps must be >= 1")
        if self.deepspeed is not None and not str(self.deepspeed).startswith("{"):
            if not Path(self.deepspeed).is_file():
                raise InputError(f"--deepspeed: config file not found: {self.deepspeed}")
            if importlib.util.find_spec("deepspeed") is None:
                raise InputError("--deepspeed needs the deepspeed package: pip install deepspeed")
        ckpt = self.resume_from_checkpoint
        problem = checkpoint_problem(Path(ckpt)) if ckpt not in (None, "latest") else None
        if problem:
            raise InputError(f"--resume_from_checkpoint: {ckpt} cannot be resumed from: {problem}; give another "
                             "checkpoint-N folder or 'latest' (the newest intact one)")
        # The toolkit's spellings, translated before TrainingArguments reads them.
        if self.eval_strategy == "auto":
            self.eval_strategy = "steps" if self.eval_steps else "epoch"
        if self.save_steps == 0:
            self.save_strategy = "no"
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        if self.data_seed is None:
            self.data_seed = self.seed  # the length-grouped order is drawn from it (see the sampler)
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise InputError(f"--early_stopping_patience must be >= 1, got {self.early_stopping_patience}")
            if self.metric_for_best_model is None:
                self.metric_for_best_model = "loss"   # as --load_best_model_at_end does; lower is better
        if not self.group_by_length:
            self.train_sampling_strategy = "random"
        if (self.gradient_checkpointing or self.activation_checkpointing) and not (
                self.gradient_checkpointing_kwargs or self.activation_checkpointing_kwargs):
            self.activation_checkpointing_kwargs = {"use_reentrant": False}
        if self.disable_tqdm is None:  # a bar redrawn with \r (and the eval bar nested in it) is debris in a log
            self.disable_tqdm = not sys.stderr.isatty()
        try:
            super().__post_init__()
        except ValueError as e:
            raise InputError(str(e).splitlines()[0]) from None


def build_parser() -> HfArgumentParser:
    """Every flag: the dataclasses' fields, TrainingArguments' included; its help is ``--help_all``."""
    parser = HfArgumentParser((ModelArguments, DataArguments, VLMTrainingArguments), description=__doc__,
                              formatter_class=cli.HelpFormatter)
    parser.add_argument(cli.HELP_ALL_FLAG, action="help", help="show every flag (this help) and exit")
    # --disable_tqdm defaults to None (decided by whether stderr is a terminal), and HfArgumentParser then wants a
    # value; the Trainer's users write it as a bare switch, so it stays one.
    tqdm_flag = parser._option_string_actions["--disable_tqdm"]
    tqdm_flag.nargs, tqdm_flag.const = "?", True
    return cli.raise_input_errors(parser)


def parse_args(argv=None) -> tuple[ModelArguments, DataArguments, VLMTrainingArguments]:
    """Parse and check every flag; cross-flag checks that need no model happen here, once.

    ``argv`` may start with a config file (``train.yaml``/``.json``, keys = flag names): its flags come first, so
    the command line's override them. ``--help`` is the short help (train_help.py), ``--help_all`` every flag."""
    argv = list(sys.argv[1:] if argv is None else argv)
    answer_brief_help(argv)
    parser = build_parser()
    config, argv = cli.split_config_file(argv)
    if config is not None:
        argv = cli.config_to_argv(config, parser) + argv  # argparse keeps a flag's last value: the command line's
    unknown = parser.parse_known_args(argv)[1]  # before the dataclasses check the flags they know
    if unknown:
        raise InputError(f"unrecognized arguments: {' '.join(unknown)} (see --help_all)")
    model, data, train = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    out = require_output_dir(train.output_dir, "--output_dir", {"--image_dir": data.image_dir})
    base = Path(model.base_model)
    if base.is_dir() and (is_within(out, base) or is_within(base, out)):
        raise InputError(f"--output_dir: {out} overlaps --base_model {base}; write the fine-tuned model elsewhere")
    ours = (out / TRAIN_ARGS_FILE).is_file() or (out / SAVING_MARKER).is_file()
    if out.is_dir() and not ours and any((out / n).exists() for n in FULL_MODEL_FILES + ADAPTER_FILES):
        # Not a folder this script wrote: never delete or overwrite someone else's files.
        raise InputError(f"--output_dir: {out} holds a model that train_vlm.py did not write; "
                         "choose an empty or new folder")
    if data.val_data is None:
        for flag in ("eval_generate", "early_stopping_patience", "load_best_model_at_end"):
            if getattr(train, flag):
                raise InputError(f"--{flag} needs --val_data (the questions it evaluates on)")
        train.eval_strategy, train.do_eval = IntervalStrategy.NO, False  # nothing to evaluate on
    if not train.eval_generate:
        check_metric_for_best_model(train.metric_for_best_model, set())
    if model.load_in_4bit or model.load_in_8bit:
        flag = "--load_in_4bit" if model.load_in_4bit else "--load_in_8bit"
        if train.device_name != "cuda":
            raise InputError(f"{flag} (QLoRA) needs a CUDA GPU; none is visible (train without it on "
                             f"{train.device_name})")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise InputError(f"{flag} needs the bitsandbytes package: pip install bitsandbytes")
    return model, data, train


# --------------------------------------------------------------------------- model
def part_names(family: families.Family) -> tuple[str, str]:
    """Name parts of the projector and of the vision tower's parameters (LLaVA: multi_modal_projector,
    vision_tower; Qwen: merger, visual.), the projector first: Qwen's merger sits inside its vision tower."""
    projector = family.projector_prefixes[0].rsplit(".", 1)[-1]
    vision = family.vision_prefixes[0].rsplit(".", 1)[-1]
    return projector, vision if vision == VISION_TOWER else vision + "."


def load_base_model(model_args: ModelArguments, precision: str, quantize: bool = True):
    """The family's model class (LlavaForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, ...)
    in the training dtype, quantized when ``quantize`` and ``model_args`` ask for it."""
    import transformers
    name, family = model_args.base_model, model_args.family
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    kwargs = {"dtype": dtype}
    if quantize and (model_args.load_in_4bit or model_args.load_in_8bit):
        from transformers import BitsAndBytesConfig
        # The vision tower, projector and head stay unquantized (small, and precision matters there).
        skip = [p.rsplit(".", 1)[-1] for p in family.vision_prefixes + family.projector_prefixes] + ["lm_head"]
        if model_args.load_in_4bit:
            qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skip)
        else:
            qcfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        kwargs["quantization_config"] = qcfg
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    try:
        return getattr(transformers, family.model_class).from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(f"--base_model {name}: cannot load a {family.title} model: "
                         f"{str(e).splitlines()[0]}") from None


def prepare_trainable(model, args: ModelArguments, checkpointing: bool):
    """LoRA (+ projector) or full fine-tune of language model + projector; the vision tower is frozen
    unless --train_vision_tower (then it is trained fully, in LoRA mode as a module to save)."""
    if args.use_lora:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        if args.load_in_4bit or args.load_in_8bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        projector, vision = (p.rsplit(".", 1)[-1] for p in (args.family.projector_prefixes[0],
                                                            args.family.vision_prefixes[0]))
        if args.train_vision_tower and projector != PROJECTOR:
            projector = None  # Qwen's merger is part of its vision tower: saved with it
        to_save = [m for m, on in ((projector, args.train_projector), (vision, args.train_vision_tower)) if on and m]
        config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                            target_modules=args.family.lora_target_regex, bias="none", task_type="CAUSAL_LM",
                            modules_to_save=to_save or None)
        model = get_peft_model(model, config)
        # Trainable weights in fp32 (AMP's grad scaler refuses fp16 gradients; optimizer states stay exact).
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    else:
        model.requires_grad_(True)
    if not args.train_vision_tower:
        for name, param in model.named_parameters():
            if families.module_role(args.family, name) == "vision":
                param.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- outputs
def save_final(trainer, out: Path, processor, fmt: PromptFormat, model_args: ModelArguments,
               record: dict, metrics: dict) -> None:
    """Write the model into a temp folder, then move it into ``out`` while SAVING_MARKER is there.

    A kill at any moment leaves the previous model, or the marker (inference refuses the folder and
    rerunning the command finishes the save); never an unmarked mix of two models.
    """
    tmp = out / _TMP_FINAL
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))  # on every process: DeepSpeed gathers the weights
    if not trainer.is_world_process_zero():
        return
    if model_args.family.uses_prompt_format:  # its chat template renders what training used (EOS after answers)
        processor.chat_template = fmt.chat_template(processor.tokenizer.eos_token)
    processor.save_pretrained(tmp)
    fmt.save(tmp)
    families.frame_from_processor(model_args.family, processor).save(tmp)
    (out / SAVING_MARKER).write_text("train_vlm.py is moving the final model into this folder\n")
    removed = remove_stale_model_files(out, model_args.use_lora, model_args.merge_lora)
    if removed:
        print(f"removed an earlier run's {', '.join(removed)} from {out}", flush=True)
    move_into(tmp, out)
    if model_args.merge_lora:
        from peft import PeftModel
        base = load_base_model(model_args, record["precision"], quantize=False)
        merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        fmt.save(tmp)
        families.frame_from_processor(model_args.family, processor).save(tmp)
        shutil.rmtree(out / MERGED_DIR, ignore_errors=True)
        move_into(tmp, out / MERGED_DIR)
        print(f"merged model written to {out / MERGED_DIR}", flush=True)
    write_json_atomic(out / METRICS_FILE, metrics)
    plot_loss(metrics, out / LOSS_PLOT_FILE)
    write_json_atomic(out / TRAIN_ARGS_FILE, record | {"status": "complete"})
    (out / SAVING_MARKER).unlink()


# --------------------------------------------------------------------------- main
@contextlib.contextmanager
def disk_full_is_one_line(out: Path):
    """A full disk while a checkpoint or the model is written is an OSError(ENOSPC), which every stage reports in
    one line (runtime.report_input_errors). torch.save says only "iostream error" and safetensors raises its own
    error type: when either fails and the output's file system has no room left, it was the disk."""
    from safetensors import SafetensorError
    try:
        yield
    except (RuntimeError, SafetensorError) as e:
        try:
            free = shutil.disk_usage(out).free
        except OSError:
            raise e from None
        if free >= _FULL_DISK_FREE:
            raise
        raise OSError(errno.ENOSPC, "No space left on device", str(out)) from None


def train(model_args: ModelArguments, data_args: DataArguments, args: VLMTrainingArguments) -> int:
    """Run one training job; 0 when it finished, 130/143 when Ctrl-C/SIGTERM stopped it at a checkpoint."""
    out = Path(args.output_dir)
    checkpoint, stale, why = resolve_checkpoint(args.resume_from_checkpoint, out, dataclasses.asdict(model_args))
    samples = sample_note = None
    if args.eval_generate:
        # Drawn once: a resumed run asks the questions its checkpoint (or its output folder) saved.
        samples, sample_note = sample_questions(data_args.val_data, args.eval_generate_samples, args.seed,
                                                [Path(checkpoint), out] if checkpoint else [])
        check_metric_for_best_model(args.metric_for_best_model, {q["type"] or "untyped" for q in samples})

    import transformers
    from transformers import AutoProcessor
    from transformers import set_seed as hf_set_seed

    from vlm_training.family_data import family_layout
    from vlm_training.llava_data import LlavaCollator, load_llava_dataset

    try:
        processor = AutoProcessor.from_pretrained(model_args.base_model)
    except (OSError, ValueError) as e:
        raise InputError(f"--base_model {model_args.base_model}: cannot load its processor: "
                         f"{str(e).splitlines()[0]}") from None
    try:
        layout = family_layout(processor, model_args.family, model_args.box_prompt, model_args.system_prompt)
    except families.FamilyError as e:
        raise InputError(f"--base_model {model_args.base_model}: {e}") from None
    fmt, family = layout.fmt, model_args.family
    layout.base_model = model_args.base_model
    train_set, train_stats = load_llava_dataset(data_args.train_data, data_args.image_dir, layout,
                                                data_args.max_length, "--train_data")
    val_set = val_stats = None
    if data_args.val_data:
        val_set, val_stats = load_llava_dataset(data_args.val_data, data_args.image_dir, layout,
                                                data_args.max_length, "--val_data")

    hf_set_seed(args.seed)
    # A full fine-tune in fp16 keeps fp32 master weights (AMP cannot step fp16 weights).
    load_precision = "fp32" if args.precision == "fp16" and not model_args.use_lora else args.precision
    model = load_base_model(model_args, load_precision)
    model.config.use_cache = False
    if hasattr(model.config, "text_config"):
        model.config.text_config.use_cache = False
    model = prepare_trainable(model, model_args, bool(args.activation_checkpointing))
    trainable, total = count_parameters(model)

    totals, stop = RunTotals(), StopOnSignal()
    projector_trained = (not model_args.use_lora) or model_args.train_projector
    callbacks = [totals, stop, SaveFrame(layout.frame, fmt)]
    generation_eval = None
    if samples is not None:
        generation_eval = GenerationEvaluator(samples, data_args.image_dir, processor, fmt, family, layout.frame,
                                              args.max_new_tokens, args.per_device_eval_batch_size, out,
                                              data_args.val_data)
        callbacks.append(SaveSamples(lambda folder: save_samples(folder, samples, data_args.val_data,
                                                                 args.eval_generate_samples, args.seed)))
    early = ResumableEarlyStopping(args.early_stopping_patience) if args.early_stopping_patience else None
    if early is not None:
        callbacks.append(early)
    trainer = VLMTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
        data_collator=LlavaCollator(layout.pad_token_id, padding_side="right", image_token_id=layout.image_token_id),
        processing_class=processor, generation_eval=generation_eval,
        callbacks=callbacks + [SealCheckpoint()], totals=totals,
        group_lrs={part_names(family)[0]: model_args.projector_lr if projector_trained else None,
                   part_names(family)[1]: model_args.vision_tower_lr if model_args.train_vision_tower else None})
    learning_rates = {  # what each part trains at (None: frozen, or LoRA on the language model)
        "language_model": args.learning_rate,
        "projector": (model_args.projector_lr or args.learning_rate) if projector_trained else None,
        "vision_tower": (model_args.vision_tower_lr or args.learning_rate) if model_args.train_vision_tower else None}
    main_process = trainer.is_world_process_zero()
    record = dataclasses.asdict(model_args) | dataclasses.asdict(data_args) | {
        "output_dir": str(out), "precision": args.precision, "device": args.device_name,
        "world_size": args.world_size, "lora_target_modules": family.lora_target_regex if model_args.use_lora else None,
        "num_image_tokens": layout.num_image_tokens, "system_prompt_text": fmt.system_prompt,
        "learning_rates": learning_rates,
        "family": family.name, "box_frame": layout.frame.to_dict(),
        "resumed_from": checkpoint, "training_args": json.loads(args.to_json_string()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    if main_process:
        print(why or "starting from scratch", flush=True)
        for path in stale:
            shutil.rmtree(path)
        out.mkdir(parents=True, exist_ok=True)
        # Written first: it marks the folder as this script's, and an unfinished run as one to continue.
        write_json_atomic(out / TRAIN_ARGS_FILE, record | {"status": "training"})
        print(train_stats.summary("train data"), flush=True)
        if val_stats:
            print(val_stats.summary("val data"), flush=True)
        if samples is not None:
            save_samples(out, samples, data_args.val_data, args.eval_generate_samples, args.seed)
            print(f"--eval_generate: every evaluation answers {sample_note} (ids in {out / SAMPLES_FILE})",
                  flush=True)
        mode = f"LoRA r={model_args.lora_r}" if model_args.use_lora else "full fine-tune"
        quant = " 4-bit" if model_args.load_in_4bit else " 8-bit" if model_args.load_in_8bit else ""
        print(f"training {mode}{quant} on {args.device_name} in {args.precision}: {trainable:,} of {total:,} "
              f"parameters trainable ({100 * trainable / max(total, 1):.2f}%)", flush=True)

    with stop.installed(), disk_full_is_one_line(out):  # a first Ctrl-C/SIGTERM from here on: StopOnSignal
        resumed = saved_state(checkpoint)
        if resumed and resumed.get("global_step", 0) >= (args.max_steps if args.max_steps > 0
                                                         else resumed.get("max_steps", float("inf"))):
            # The checkpoint is the last step (a kill during the final save, or 'latest' of a finished run):
            # the Trainer would take one step more. Load it and finish the save instead.
            trainer._load_from_checkpoint(checkpoint)
            trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
            totals.on_train_begin(args, trainer.state, trainer.control)
        else:
            trainer.train(resume_from_checkpoint=checkpoint)
        state = trainer.state
        # Early stopping ends a run before max_steps, finished all the same.
        finished = state.global_step >= state.max_steps or (early is not None and early.stopped
                                                             and stop.received is None)
        if finished:
            # The final eval, unless evaluation already ran at the last step (the same numbers twice).
            last_eval = next((e for e in reversed(state.log_history)
                              if "eval_loss" in e and e.get("step") == state.global_step), None)
            final_eval = (last_eval or trainer.evaluate()) if val_set is not None else {}
            metrics = collect_metrics(state.log_history)
            metrics.update({
                "final_train_loss": metrics["train_loss"][-1]["loss"] if metrics["train_loss"] else None,
                "final_eval_loss": final_eval.get("eval_loss"),
                "global_step": state.global_step,
                "epochs": state.epoch,
                # The whole run, every resumed session included (RunTotals travels in the checkpoints).
                "train_runtime_s": totals.seconds,
                "train_samples_per_second": totals.examples / totals.seconds if totals.seconds else None,
                "train_steps_per_second": state.global_step / totals.seconds if totals.seconds else None,
                "padding_fraction": totals.padding / totals.tokens if totals.tokens else None,
                "resumed_from": checkpoint,
                "train_data": train_stats.__dict__ | {"dropped_ids": train_stats.dropped_ids[:20]},
                "val_data": (val_stats.__dict__ | {"dropped_ids": val_stats.dropped_ids[:20]}) if val_stats else None,
                "trainable_parameters": trainable,
                "total_parameters": total,
                # Which evaluation was best by --metric_for_best_model (and, with --load_best_model_at_end, the
                # checkpoint whose weights were saved as the model).
                "metric_for_best_model": args.metric_for_best_model,
                "best_metric": state.best_metric,
                "best_global_step": state.best_global_step,
                "best_model_checkpoint": state.best_model_checkpoint,
                "loaded_best_model": bool(args.load_best_model_at_end and state.best_model_checkpoint),
            })
            save_final(trainer, out, processor, fmt, model_args, record, metrics)
    if not finished:
        if main_process:
            what = "interrupted" if stop.received in (None, signal.SIGINT) else \
                f"terminated ({signal.Signals(stop.received).name})"
            print(f"{what} at step {state.global_step} of {state.max_steps}: checkpoint saved to "
                  f"{out / f'{PREFIX_CHECKPOINT_DIR}-{state.global_step}'}; run the same command again to "
                  "continue from there", file=sys.stderr, flush=True)
        # The shell's convention, 128 + the signal: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP.
        return {signal.SIGTERM: EXIT_TERMINATED, signal.SIGHUP: 128 + signal.SIGHUP}.get(stop.received,
                                                                                          EXIT_INTERRUPTED)
    if main_process:
        eval_part = f", eval loss {metrics['final_eval_loss']:.4f}" if metrics["final_eval_loss"] is not None else ""
        print(f"trained {plural(metrics['global_step'], 'step')} ({metrics['epochs']:.2f} epochs) on "
              f"{plural(train_stats.examples, 'example')} in {totals.seconds:.1f}s ({metrics['train_samples_per_second'] or 0:.2f} samples/s); "
              f"final train loss {metrics['final_train_loss']:.4f}{eval_part} -> {out}", flush=True)
    return 0


@report_input_errors
def main(argv=None) -> int:
    model_args, data_args, training_args = parse_args(argv)
    try:
        # `train_vlm.py ... | head`: the run goes on when the reader goes (report_input_errors guards stdout)
        if int(os.environ.get("RANK", "0")) != 0:  # one lock per run, held by its first process
            return train(model_args, data_args, training_args)
        with single_writer(training_args.output_dir, "--output_dir"):
            return train(model_args, data_args, training_args)
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """Under torchrun, close the process group the Trainer opened before the interpreter exits: left open,
    gloo's background threads met interpreter shutdown now and then ("terminate called without an active
    exception", SIGABRT of a rank whose run had finished)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
