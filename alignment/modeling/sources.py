"""Where a model comes from: ``model_name_or_path`` resolved to weights, tokenizer and adapters to apply.

Sources, tried in this order:

- ``embedded``: the name of a model that ships in a pip package (:mod:`alignment.modeling.embedded`), the
  default ``smollm2-135m-instruct``; de-quantized once and cached as safetensors.
- ``gguf``: a ``.gguf`` file; de-quantized by transformers once and cached like the default.
- ``stage_dir``: the output directory of an earlier stage (:mod:`alignment.modeling.stage_dir`): ``model/``
  (full weights) or ``adapter/`` on the base named in ``base_model.json``.
- ``local_dir``: a directory with ``config.json`` and weights.
- ``hub``: a Hugging Face Hub id, pinned with ``revision``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignment.core.identity import looks_local
from alignment.modeling.embedded import embedded_model_dir, gguf_cache_dir, is_embedded
from alignment.modeling.stage_dir import ADAPTER_DIR, BASE_MODEL_FILE, MODEL_DIR, TOKENIZER_DIR

SourceKind = Literal["embedded", "stage_dir", "gguf", "local_dir", "hub"]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelLoadError(OSError):
    """A model or tokenizer cannot be found or loaded; the message says which and what to do."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved to what ``from_pretrained`` needs.

    ``weights``: directory or Hub id of the base weights (for an adapter stage dir: its base's).
    ``adapters``: adapter directories to apply on top, innermost first, each with what it sits on.
    """

    kind: SourceKind
    name_or_path: str
    weights: str
    revision: str | None = None
    tokenizer: str | None = None
    adapters: tuple[tuple[str, dict], ...] = ()
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def tokenizer_location(self) -> str:
        return self.tokenizer or self.weights


def resolve_model_source(name_or_path: str, revision: str | None = None) -> ModelSource:
    """Classify ``name_or_path`` and find its weights; builds the embedded/GGUF cache on first use."""
    return _resolve(name_or_path, revision, depth=0)


def _resolve(name: str, revision: str | None, depth: int) -> ModelSource:
    if depth > 8:
        raise ModelLoadError(f"{name}: base_model.json chain is deeper than 8 stages (a loop?)")
    path = Path(name).expanduser()
    if is_embedded(name) and not path.exists():
        return ModelSource("embedded", name, str(embedded_model_dir(name)))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ModelSource("gguf", name, str(gguf_cache_dir(path)))
    if path.is_dir():
        return _resolve_dir(path.resolve(), name, depth)
    # A name that looks local (a path prefix, or a parent folder that exists here) is never sent to the Hub.
    if looks_local(name) or name.count("/") > 1 or not _HUB_ID.match(name):
        raise ModelLoadError(
            f"model '{name}' not found: no such file or directory, and not a Hub id (org/name); "
            "model_name_or_path takes a Hub id, a local directory, a .gguf file, a stage output "
            "directory, or 'smollm2-135m-instruct'"
        )
    return ModelSource("hub", name, name, revision=revision)


def _resolve_dir(path: Path, name: str, depth: int) -> ModelSource:
    info_file = path / BASE_MODEL_FILE
    has_adapter = (path / ADAPTER_DIR / "adapter_config.json").is_file()
    has_model = (path / MODEL_DIR / "config.json").is_file()
    tokenizer = str(path / TOKENIZER_DIR) if (path / TOKENIZER_DIR).is_dir() else None
    if (has_adapter or has_model) and info_file.is_file():
        info = _read_json(info_file)
        if has_model:  # self-contained (full fine-tune or merged export): no base needed
            return ModelSource("stage_dir", name, str(path / MODEL_DIR), tokenizer=tokenizer, info=info)
        if "model_name_or_path" not in info:
            raise ModelLoadError(f"{info_file}: field 'model_name_or_path' is missing")
        base = _resolve(info["model_name_or_path"], info.get("revision"), depth + 1)
        sits_on = {"model_name_or_path": info["model_name_or_path"], "revision": info.get("revision")}
        adapters = (*base.adapters, (str(path / ADAPTER_DIR), sits_on))
        return ModelSource(
            "stage_dir", name, base.weights, base.revision, tokenizer or base.tokenizer_location, adapters, info
        )
    if has_adapter or has_model:
        raise ModelLoadError(f"{path} looks like a stage output directory but has no {BASE_MODEL_FILE}")
    if (path / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{path} is a bare peft adapter: pass its base as model_name_or_path and this directory as adapter_path"
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: a model directory needs config.json (or a stage's model/ or adapter/)")
    return ModelSource("local_dir", name, str(path))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def hub_error(source: ModelSource, what: str, error: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0")
    return ModelLoadError(
        f"cannot load the {what} '{source.name_or_path}' (revision {source.revision or 'main'}) from the "
        f"Hugging Face Hub (HF_HUB_OFFLINE={offline}): {error}\n"
        "Check the id, or use a local directory, a .gguf file, a stage output directory, or the "
        "embedded default 'smollm2-135m-instruct'."
    )
