"""Typed configs: small dataclasses filled from a YAML recipe, then from command-line overrides.

trl's ``TrlParser`` shape: ``--config recipe.yaml --learning_rate 1e-5``, flat keys with the Hugging Face names, the
command line winning over the file. Added: an unknown key is an error naming where it was written (``file:line``)
and the nearest known key, and ``--help`` is generated from each field's ``metadata["help"]``.

Hand-written rather than ``HfArgumentParser`` because that parser cannot report YAML line
numbers, has no nearest-key suggestion, and drags in the 100+-field ``TrainingArguments``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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

    def __post_init__(self) -> None:
        _require(
            self.invalid_records in ("raise", "skip"),
            f"invalid_records must be one of raise, skip, got {self.invalid_records!r}",
        )
        _require(self.eval_split_size >= 0, f"eval_split_size must be >= 0, got {self.eval_split_size}")
        for key in ("max_samples", "max_eval_samples"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"{key} must be at least 1 (or unset), got {value}")


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
    bf16: bool = _help("Autocast to bf16 (where the hardware has it).", default=False)
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


# ----------------------------------------------------------------------------------- parsing


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


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML mapping and the line of each key (``"key"`` and ``"section.key"``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    lines: dict[str, int] = {}

    def walk(n: Any, prefix: str, merged: bool = False) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                if key_node.value == "<<":  # a YAML merge: its keys are where the anchored mapping wrote them
                    for source in value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]:
                        walk(source, prefix, merged=True)
                    continue
                key = f"{prefix}{key_node.value}"
                if merged:
                    lines.setdefault(key, key_node.start_mark.line + 1)
                else:
                    lines[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".", merged)

    if node is not None:
        walk(node, "")
    return data, lines


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type; raise ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], key)
    if origin in (list, tuple):
        (item_type,) = args[:1] or (str,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, item_type, key) for v in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' expects a mapping, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"'{key}' expects true or false, got {value!r}")
    if annotation in (int, float):
        try:
            number = float(value) if annotation is float else int(str(value).replace("_", ""))
        except (TypeError, ValueError):
            raise ConfigError(
                f"'{key}' expects {'a number' if annotation is float else 'an integer'}, got {value!r}"
            ) from None
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"'{key}' expects text, got {value!r}")
        return str(value)
    return value


def _argv_to_pairs(argv: list[str], bool_keys: set[str]) -> list[tuple[str, str | bool]]:
    pairs: list[tuple[str, str | bool]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: options look like --key value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            pairs.append((key.replace("-", "_"), value))
            i += 1
            continue
        key = key.replace("-", "_")
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if key in bool_keys and (nxt is None or nxt.startswith("--")):
            pairs.append((key, True))
            i += 1
        elif nxt is None or (nxt.startswith("--") and not re.match(r"^--?\d", nxt)):
            raise ConfigError(f"--{key} needs a value")
        else:
            pairs.append((key, nxt))
            i += 2
    return pairs


def format_help(config_types: tuple[type, ...], prog: str = "alignment") -> str:
    lines = [f"usage: {prog} [--config recipe.yaml] [--key value ...]", ""]
    for cls in config_types:
        lines.append(f"{section_name(cls)}:")
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            type_name = getattr(hints[f.name], "__name__", str(hints[f.name])).replace("typing.", "")
            lines.append(f"  --{f.name} ({type_name}, default {default!r})")
            if f.metadata.get("help"):
                lines.append(f"      {f.metadata['help']}")
        lines.append("")
    return "\n".join(lines)


def build_config(
    config_types: tuple[type, ...],
    values: dict[str, Any],
    where: dict[str, str] | None = None,
) -> Config:
    """Fill the dataclasses from flat ``values``; ``where[key]`` says where a key was written."""
    where = where or {}
    owners: dict[str, type] = {}
    derived: set[str] = set()
    for cls in config_types:
        for f in dataclasses.fields(cls):
            if not f.init:
                derived.add(f.name)
                continue
            if f.name in owners and owners[f.name] is not cls:
                raise ConfigError(f"key '{f.name}' is defined by both {owners[f.name].__name__} and {cls.__name__}")
            owners[f.name] = cls
    kwargs: dict[type, dict[str, Any]] = {cls: {} for cls in config_types}
    for key, value in values.items():
        location = where.get(key, "command line")
        if key in derived:
            raise ConfigError(f"{location}: '{key}' is computed from other settings and cannot be set")
        if key not in owners:
            close = difflib.get_close_matches(key, list(owners), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{location}: unknown key '{key}'{hint}")
        cls = owners[key]
        try:
            kwargs[cls][key] = _coerce(value, _field_types(cls)[key], key)
        except ConfigError as e:
            raise ConfigError(f"{location}: {e}") from None
    sections = {}
    for cls in config_types:
        try:
            sections[section_name(cls)] = cls(**kwargs[cls])
        except (ValueError, TypeError) as e:
            raise ConfigError(f"invalid {section_name(cls)} settings: {e}") from None
    return Config(sections)


def split_config_arg(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take every ``--config FILE`` (or ``--config=FILE``) out of ``argv``; returns (the FILEs in order, the rest).

    Several files layer: a later file's keys override an earlier one's (a stage or pipeline recipe,
    then a model-family recipe from ``configs/models/``), and command-line flags override them all.
    """
    rest, paths = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--config":
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError("--config needs a file")
            paths.append(argv[i + 1])
            i += 2
            continue
        if token.startswith("--config="):
            path = token.split("=", 1)[1]
            if not path:
                raise ConfigError("--config needs a file")
            paths.append(path)
        else:
            rest.append(token)
        i += 1
    return paths, rest


def bool_keys_of(config_types: tuple[type, ...]) -> set[str]:
    return {f.name for cls in config_types for f in dataclasses.fields(cls) if _field_types(cls).get(f.name) is bool}


def parse_overrides(argv: list[str], bool_keys: set[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / bare boolean ``--flag`` pairs as a dict (the command-line layer)."""
    return dict(_argv_to_pairs(argv, bool_keys))


def parse_config(config_types: tuple[type, ...], argv: list[str] | None = None, prog: str = "alignment") -> Config:
    """YAML values from each ``--config`` in turn, then command-line overrides; ``--help`` prints and exits."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(format_help(config_types, prog) + "\n")
        raise SystemExit(0)
    config_paths, argv = split_config_arg(argv)
    flags = _argv_to_pairs(argv, bool_keys_of(config_types))
    return layered_config(config_types, config_paths, [(k, v, f"command line (--{k})") for k, v in flags])


def layered_config(
    config_types: tuple[type, ...], config_paths: list[str], overrides: list[tuple[str, Any, str]]
) -> Config:
    """The YAML files in order (a later file's keys win), then ``overrides`` as ``(key, value, where written)``.

    The one way a stage's config is assembled from files plus overrides: the command line passes its flags here,
    a sweep its grid point, and errors name the file and line, or the override's source, of the bad value.
    """
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for config_path in config_paths:
        data, lines = load_yaml(config_path)
        for key, value in data.items():
            values[key] = value
            where[key] = f"{config_path}:{lines.get(key, '?')}"
    for key, value, source in overrides:
        values[key] = value
        where[key] = source
    return build_config(config_types, values, where)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.flat(), sort_keys=False), encoding="utf-8")
