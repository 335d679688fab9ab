"""Typed configs: the settings every stage shares, as small dataclasses (one per section), each checking its own
values when built; :mod:`alignment.core.config_parsing` fills them from a YAML recipe and the command line."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

# ----------------------------------------------------------------------------------- shared types


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class ModelConfig:
    model_name_or_path: str = _help(
        "Hub id, local directory, .gguf file, a stage output directory, or 'smollm2-135m-instruct' (embedded default).",
        default="smollm2-135m-instruct",
    )
    revision: str | None = _help("Hub revision (branch, tag or commit) to pin.", default=None)
    tokenizer_name_or_path: str | None = _help("Tokenizer source when it differs from the model's.", default=None)
    dtype: str = _help("Weights dtype: auto, bf16, fp16, fp32.", default="auto")
    trust_remote_code: bool = _help("Run model code from the Hub repository (off unless you trust it).", default=False)
    gradient_checkpointing: bool = _help("Recompute activations in backward to save memory.", default=False)
    attn_implementation: str | None = _help(
        "sdpa, eager or flash_attention_2; None lets transformers pick.", default=None
    )
    chat_template: str | None = _help(
        "Jinja chat template (or a path to one) for base models that ship none; 'chatml' and 'gemma' name built-in ones.",
        default=None,
    )


@dataclass
class LoraConfig:
    use_lora: bool = _help("Train LoRA adapters instead of all weights.", default=True)
    lora_r: int = _help("LoRA rank.", default=8)
    lora_alpha: int = _help("LoRA scaling numerator (scale = alpha / r).", default=16)
    lora_dropout: float = _help(
        "Dropout on the LoRA path (keep 0 for PPO: log-probs must be deterministic).", default=0.0
    )
    lora_target_modules: list[str] = _help(
        "Modules to adapt: 'all-linear' or names such as q_proj,v_proj.", default_factory=lambda: ["all-linear"]
    )

    def __post_init__(self) -> None:
        _require(self.lora_r >= 1, f"lora_r must be at least 1, got {self.lora_r}")
        _require(self.lora_alpha > 0, f"lora_alpha must be positive, got {self.lora_alpha}")
        _require(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class QuantConfig:
    load_in_8bit: bool = _help("Load the frozen base in 8-bit (bitsandbytes LLM.int8).", default=False)
    load_in_4bit: bool = _help("Load the frozen base in 4-bit (bitsandbytes, QLoRA).", default=False)
    bnb_4bit_quant_type: str = _help("4-bit data type: nf4 or fp4.", default="nf4")
    bnb_4bit_use_double_quant: bool = _help("Quantize the 4-bit quantization constants too.", default=True)
    bnb_4bit_compute_dtype: str = _help("Compute dtype for 4-bit layers: bf16, fp16, fp32.", default="fp32")

    def __post_init__(self) -> None:
        _require(
            not (self.load_in_8bit and self.load_in_4bit), "load_in_8bit and load_in_4bit are both set: choose one"
        )
        _require(
            self.bnb_4bit_quant_type in ("nf4", "fp4"),
            f"bnb_4bit_quant_type: nf4 or fp4, not {self.bnb_4bit_quant_type!r}",
        )


@dataclass
class DataConfig:
    dataset_name: str | None = _help(
        "Local file (json, jsonl, .gz, csv, parquet) or Hub dataset id; 'demo' for built-in data.", default=None
    )
    dataset_mixture: list[str] = _help(
        "Several sources read in turn and joined (each with its own format): used instead of dataset_name. Any source "
        "may end in a row range, file.jsonl[0:750], to take rows 0..749 only.",
        default_factory=list,
    )
    dataset_format: str = _help("Record format, or 'auto' to detect it from the columns.", default="auto")
    dataset_split: str = _help("Split to read from a Hub dataset.", default="train")
    dataset_subset: str | None = _help("Hub dataset configuration name.", default=None)
    dataset_data_dir: str | None = _help("Hub dataset data_dir (e.g. helpful-online for HH-RLHF).", default=None)
    eval_dataset_name: str | None = _help(
        "Separate held-out file; otherwise eval_split_size records are held out.", default=None
    )
    eval_split_size: float = _help("Held-out share (<1) or count (>=1) taken from the training data.", default=0.0)
    max_samples: int | None = _help("Use only the first N training records.", default=None)
    max_eval_samples: int | None = _help("Use only the first N held-out records.", default=None)
    invalid_records: str = _help(
        "On a malformed record: 'raise' (default) or 'skip' and report counts.", default="raise"
    )
    select_rows: dict[str, list[str]] = _help(
        "Keep only the rows whose column holds one of these values, in every source: {category: [harmless]}. A "
        "row without the column is an error naming it.",
        default_factory=dict,
    )
    prompt_labels: dict[str, str] = _help(
        "A label for the prompts of a source that carry none, by the source as written in dataset_mixture or "
        "dataset_name: {'red-team.jsonl[0:150]': harmful}. PPO's reward_weights_by_label reads it; prompt files "
        "with a label column keep their own.",
        default_factory=dict,
    )

    def __post_init__(self) -> None:
        _require(
            self.invalid_records in ("raise", "skip"),
            f"invalid_records must be one of raise, skip, got {self.invalid_records!r}",
        )
        for column, values in self.select_rows.items():
            _require(
                isinstance(values, list) and bool(values),
                f"select_rows: {column!r} needs a list of the values to keep, got {values!r}",
            )
        for source, label in self.prompt_labels.items():
            _require(
                source in self.source_names,
                f"prompt_labels: {source!r} is not a source this stage reads (dataset_mixture, else dataset_name): "
                f"{', '.join(self.source_names) or 'none set'}",
            )
            _require(isinstance(label, str) and bool(label), f"prompt_labels: {source!r} needs a text label")
        _require(self.eval_split_size >= 0, f"eval_split_size must be >= 0, got {self.eval_split_size}")
        for key in ("max_samples", "max_eval_samples"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"{key} must be at least 1 (or unset), got {value}")

    @property
    def source_names(self) -> list[str]:
        """The sources as written: ``dataset_mixture`` when set, else ``dataset_name`` alone (none: empty)."""
        return list(self.dataset_mixture) or ([self.dataset_name] if self.dataset_name else [])


@dataclass
class TrainConfig:
    output_dir: str = _help("Where the stage writes its outputs and checkpoints.", default="runs/stage")
    seed: int = _help("Seed for data order, initialisation and sampling.", default=42)
    learning_rate: float = _help("Peak learning rate.", default=2e-4)
    num_train_epochs: float = _help("Passes over the training data.", default=1.0)
    max_steps: int = _help("Stop after this many optimizer steps (-1: from epochs).", default=-1)
    max_train_minutes: float = _help("Stop after this many minutes of training steps (0: no limit).", default=0.0)
    per_device_train_batch_size: int = _help("Examples per process per micro-batch.", default=8)
    per_device_eval_batch_size: int = _help("Examples per process per eval batch.", default=8)
    gradient_accumulation_steps: int = _help("Micro-batches per optimizer step.", default=1)
    max_length: int = _help("Longest tokenized sequence; longer ones are truncated (and counted).", default=512)
    lr_scheduler_type: str = _help("linear, cosine or constant (all after warmup).", default="linear")
    warmup_ratio: float = _help("Share of steps spent warming the learning rate up.", default=0.0)
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    max_grad_norm: float = _help("Clip the gradient norm to this.", default=1.0)
    bf16: bool | Literal["auto"] = _help(
        "Autocast to bf16. auto: on a GPU that has bf16 and on a CPU with AMX (1.7x faster there at 135M); else fp32.",
        default=False,
    )
    logging_steps: int = _help("Log every N optimizer steps.", default=1)
    eval_steps: int = _help("Evaluate every N steps (0: only before and after training).", default=0)
    save_steps: int = _help("Checkpoint every N steps (0: only at the end and on Ctrl-C).", default=50)
    save_total_limit: int = _help("Keep at most this many checkpoints.", default=2)
    resume: bool = _help(
        "Continue from the newest checkpoint in output_dir (a run of the same settings).", default=False
    )
    overwrite: bool = _help(
        "Start over in an output_dir that holds an earlier run (never in a folder that is not a run directory).",
        default=False,
    )
    report_to: list[str] = _help(
        "Extra loggers: tensorboard, wandb, trackio (JSONL is always written).", default_factory=list
    )
    cpu: bool = _help("Force the CPU even when a GPU is present.", default=False)
    fsdp: bool = _help("Shard weights, grads and optimizer state over the processes (FSDP2).", default=False)

    def __post_init__(self) -> None:
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            _require(getattr(self, key) >= 1, f"{key} must be at least 1, got {getattr(self, key)}")
        for key in ("logging_steps", "save_total_limit"):
            _require(getattr(self, key) >= 1, f"{key} must be at least 1, got {getattr(self, key)}")
        _require(self.max_length >= 2, f"max_length must be at least 2 tokens, got {self.max_length}")
        _require(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            f"learning_rate must be a positive number, got {self.learning_rate}",
        )
        _require(self.num_train_epochs > 0, f"num_train_epochs must be positive, got {self.num_train_epochs}")
        _require(self.max_steps == -1 or self.max_steps >= 1, f"max_steps must be -1 or >= 1, got {self.max_steps}")
        _require(self.max_train_minutes >= 0, f"max_train_minutes must be >= 0, got {self.max_train_minutes}")
        _require(0.0 <= self.warmup_ratio <= 1.0, f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        _require(self.max_grad_norm > 0, f"max_grad_norm must be positive, got {self.max_grad_norm}")
        _require(self.eval_steps >= 0 and self.save_steps >= 0, "eval_steps and save_steps must be >= 0")
        _require(not (self.resume and self.overwrite), "resume and overwrite are both set: choose one")


# ----------------------------------------------------------------------------------- the parsed recipe


def _require(condition: bool, message: str) -> None:
    """A setting's own check, run when its section is built: before anything is loaded or written."""
    if not condition:
        raise ValueError(message)


class ConfigError(ValueError):
    """A bad recipe or command line: unknown key, bad value, missing file."""


def section_name(cls: type) -> str:
    """``ModelConfig`` -> ``model``; ``PPOConfig`` -> ``ppo``."""
    name = cls.__name__.removesuffix("Config")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Config:
    """The parsed recipe: one attribute per dataclass section (``cfg.model``, ``cfg.train``, ...)."""

    def __init__(self, sections: dict[str, Any]) -> None:
        self._sections = sections
        for name, value in sections.items():
            setattr(self, name, value)

    def sections(self) -> dict[str, Any]:
        return dict(self._sections)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(obj) for name, obj in self._sections.items()}

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for obj in self._sections.values():
            out.update(dataclasses.asdict(obj))
        return out
