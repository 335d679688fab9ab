"""The stage-output contract: what a stage writes to its output directory and how the next stage reads it back.

Layout of ``<output_dir>/`` (every stage that produces a model writes it through :func:`save_stage_model`):

- ``adapter/`` (LoRA runs: peft adapter) or ``model/`` (full weights or a merged export), as safetensors;
- ``tokenizer/``, with the chat template the stage used;
- ``base_model.json``: what an adapter sits on (``model_name_or_path``, ``revision``) and how it was made
  (``dtype``, ``weights``, ``task``, ``quantized_base``, ``chat_template``).

The loader (:mod:`alignment.modeling.sources`) resolves such a directory back to its base plus adapters, so
``load_causal_lm(ModelConfig(model_name_or_path=out_dir), ...)`` rebuilds the saved model. Every write goes to a
temporary sibling first and replaces the target only once complete, so a crash never leaves half a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignment.core.config import ModelConfig

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
BASE_MODEL_FILE = "base_model.json"
# Attribute set on loaded models: what their (outermost, unmerged) adapter sits on.
ADAPTER_BASE_ATTR = "alignment_adapter_base"


def absolute_name(name: str) -> str:
    """Local paths are recorded absolute, so a later stage finds them from any working directory."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def is_quantized(model: nn.Module) -> bool:
    return getattr(model, "hf_quantizer", None) is not None or bool(getattr(model, "is_quantized", False))


def save_stage_model(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    *,
    adapter_name: str | None = None,
    sits_on: dict[str, Any] | None = None,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write a stage's model hand-off: ``adapter/`` or ``model/``, ``tokenizer/``, ``base_model.json``.

    ``load_causal_lm(ModelConfig(model_name_or_path=out_dir), ...)`` (or ``load_reward_model``) then
    rebuilds the same model: the adapter goes back on the base recorded here.
    ``adapter_name``: save only this adapter of a model that holds several (PPO's policy beside its
    reference, critic and reward adapters). ``sits_on``: ``{"model_name_or_path", "revision"}`` of the
    base the adapter sits on, when the model does not carry that record from the loader. ``state_dict``: the
    weights to write instead of the model's own (a sharded model's, gathered whole: ``core.sharding``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_adapter = isinstance(model, PeftModel)
    weights = {} if state_dict is None else {"state_dict": state_dict}
    with atomic_dir(out / (ADAPTER_DIR if is_adapter else MODEL_DIR)) as tmp:
        if is_adapter and adapter_name is not None:
            # peft writes a named adapter into a sub-folder of that name: lift its files into place.
            model.save_pretrained(
                str(tmp / "selected"), selected_adapters=[adapter_name], save_embedding_layers=False, **weights
            )
            saved = tmp / "selected" / adapter_name if adapter_name != "default" else tmp / "selected"
            for item in saved.iterdir():
                os.replace(item, tmp / item.name)
            shutil.rmtree(tmp / "selected")
        elif is_adapter:
            # Embedding rows added for new tokens are rebuilt deterministically on load, not saved.
            model.save_pretrained(tmp, save_embedding_layers=False, **weights)
        else:
            model.save_pretrained(tmp, **weights)
    with atomic_dir(out / TOKENIZER_DIR) as tmp:
        tokenizer.save_pretrained(tmp)
    info = _base_model_info(model, model_cfg, tokenizer, sits_on)
    tmp_file = out / f".{BASE_MODEL_FILE}.tmp"
    tmp_file.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_file, out / BASE_MODEL_FILE)
    logger.info("saved stage model (%s) to %s", "adapter" if is_adapter else "full weights", out)
    return out


def _base_model_info(
    model: PreTrainedModel | PeftModel,
    model_cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    sits_on: dict[str, Any] | None,
) -> dict[str, Any]:
    default = {"model_name_or_path": absolute_name(model_cfg.model_name_or_path), "revision": model_cfg.revision}
    sits_on = sits_on or getattr(model, ADAPTER_BASE_ATTR, None) or default
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    is_seq_cls = base.__class__.__name__.endswith("ForSequenceClassification")
    template_source = model_cfg.chat_template or "the base model's tokenizer"
    return {
        "model_name_or_path": sits_on["model_name_or_path"],
        "revision": sits_on.get("revision"),
        "dtype": model_cfg.dtype,
        "weights": "adapter" if isinstance(model, PeftModel) else "model",
        "task": "sequence_classification" if is_seq_cls else "causal_lm",
        "quantized_base": is_quantized(base),
        "chat_template": (
            f"tokenizer/ holds the chat template used (from {template_source})"
            if tokenizer.chat_template
            else "none: the tokenizer has no chat template"
        ),
    }


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Write into a temporary sibling directory; replace ``target`` with it only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates it private
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_base_model_info(stage_dir: str | Path) -> dict[str, Any] | None:
    """``base_model.json`` of a stage output, or None when ``stage_dir`` is not one."""
    info_path = Path(stage_dir) / BASE_MODEL_FILE
    if not info_path.is_file():
        return None
    return json.loads(info_path.read_text(encoding="utf-8"))


def has_adapter(stage_dir: str | Path) -> bool:
    return (Path(stage_dir) / ADAPTER_DIR / "adapter_config.json").is_file()


def stage_base(stage_dir: str | Path, model_cfg: ModelConfig) -> tuple[ModelConfig, Path | None]:
    """(config of the base a stage output sits on, its adapter dir), or (``stage_dir`` itself, None) for full weights.

    Any other path (a Hub id, a plain model directory) is its own base, with no adapter.
    """
    stage_dir = Path(stage_dir)
    info = read_base_model_info(stage_dir)
    if info is not None and has_adapter(stage_dir):
        base = dataclasses.replace(
            model_cfg, model_name_or_path=info["model_name_or_path"], revision=info.get("revision")
        )
        return base, stage_dir / ADAPTER_DIR
    return dataclasses.replace(model_cfg, model_name_or_path=str(stage_dir)), None


def shares_base(stage_dir: str | Path, base_cfg: ModelConfig) -> bool:
    """Whether the stage output at ``stage_dir`` is an adapter on exactly the base ``base_cfg`` names."""
    info = read_base_model_info(stage_dir)
    if info is None or not has_adapter(stage_dir):
        return False
    return info.get("model_name_or_path") == base_cfg.model_name_or_path and info.get("revision") == base_cfg.revision
