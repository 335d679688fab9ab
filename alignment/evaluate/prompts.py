"""The evaluation's inputs and what was generated from them before: labelled prompt sets and the generation cache.

Generations are saved as ``<output_dir>/generations/<policy>.jsonl``, keyed by a hash of the policy's weights, the
prompts and the sampling settings. Sampling dominates the cost of an evaluation, so swapping or adding a reward model
re-scores the saved responses without sampling again. The KL of a policy to the reference is saved beside them
(``<policy>.kl.json``), keyed by both policies' generation keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignment.core.config import Config, ModelConfig
from alignment.core.tracking import write_json_atomic
from alignment.data.demo import DEMO_DIR
from alignment.data.load import load_records_from_path
from alignment.evaluate.records import EvalPrompt, Generation, PolicySpec

logger = logging.getLogger(__name__)

DEMO_EVAL_PROMPTS = DEMO_DIR / "eval_prompts.jsonl"
GENERATIONS_DIR = "generations"


# ----------------------------------------------------------------------------------------------- prompts


def load_prompt_sets(paths: Sequence[str], max_per_label: int, seed: int, invalid: str = "raise") -> list[EvalPrompt]:
    """Read every prompt set; keep at most ``max_per_label`` prompts per label (a seeded sample, in file order)."""

    prompts: list[EvalPrompt] = []
    for path in paths:
        source = str(DEMO_EVAL_PROMPTS) if path == "demo" else path
        if path == "demo" and not DEMO_EVAL_PROMPTS.is_file():
            raise FileNotFoundError(f"prompt_sets: the demo evaluation prompts {DEMO_EVAL_PROMPTS} are missing")
        records = load_records_from_path(source, "prompt", invalid=invalid)
        prompts += [EvalPrompt(r, source, records.format) for r in records.records]
    if not prompts:
        raise ValueError(f"prompt_sets {list(paths)} hold no prompts")
    if max_per_label > 0:
        prompts = _cap_per_label(prompts, max_per_label, seed)
    counts: dict[str, int] = {}
    for p in prompts:
        counts[str(p.label)] = counts.get(str(p.label), 0) + 1
    logger.info("evaluation prompts: %d (%s)", len(prompts), ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return prompts


def _cap_per_label(prompts: list[EvalPrompt], max_per_label: int, seed: int) -> list[EvalPrompt]:
    by_label: dict[str | None, list[int]] = {}
    for i, p in enumerate(prompts):
        by_label.setdefault(p.label, []).append(i)
    rng = random.Random(seed)
    keep: set[int] = set()
    for indices in by_label.values():
        keep.update(indices if len(indices) <= max_per_label else rng.sample(indices, max_per_label))
    return [p for i, p in enumerate(prompts) if i in keep]


# ----------------------------------------------------------------------------------------------- cache keys


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def policy_fingerprint(path: str) -> list[Any]:
    """What identifies a policy's weights: its path plus size and mtime of its weight and config files.

    The base under a stage dir's adapter is identified by ``base_model.json`` only (its own files are not checked).
    """
    from alignment.modeling.embedded import embedded_gguf_path, is_embedded

    p = Path(path).expanduser()
    if not p.exists() and is_embedded(path):
        p = embedded_gguf_path(path)  # the packaged GGUF the embedded default is built from
    if not p.exists():
        return [path]  # a Hub id (its revision is part of the key)
    if p.is_file():
        return [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
    files = [f for pattern in ("*", "adapter/*", "model/*") for f in p.glob(pattern) if f.is_file()]
    files = [f for f in files if f.suffix in (".safetensors", ".json", ".bin", ".gguf")]
    return [str(p.resolve())] + sorted([str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns] for f in files)


def sampling_settings(cfg: Config) -> dict[str, Any]:
    """The settings that shape the answers. Not the generation batch: each answer has its own random stream.
    ``sampler`` tells these answers from those of the one-stream sampler before it, which the key must not reuse."""
    ev = cfg.evaluate
    return {
        "sampler": "row_streams",
        "temperature": ev.temperature,
        "max_new_tokens": ev.max_new_tokens,
        "max_prompt_length": ev.max_prompt_length,
        "seed": cfg.train.seed,
        # Recorded only when set, so that the saved generations of runs made before the setting existed stay valid.
        **({"answers_per_prompt": ev.answers_per_prompt} if ev.answers_per_prompt > 1 else {}),
    }


def generation_key(
    spec: PolicySpec, prompts: Sequence[EvalPrompt], settings: dict[str, Any], model_cfg: ModelConfig
) -> str:
    prompt_data = [[[m.to_dict() for m in p.prompt.messages], p.label] for p in prompts]
    model_data = {k: getattr(model_cfg, k) for k in ("dtype", "chat_template", "tokenizer_name_or_path", "revision")}
    return _hash({"policy": policy_fingerprint(spec.path), "model": model_data, "prompts": prompt_data, **settings})


# ----------------------------------------------------------------------------------------------- saved files


def _safe_filename(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def save_generations(
    out_dir: Path, name: str, key: str, generations: Sequence[Generation], meta: dict[str, Any]
) -> None:
    """``<name>.jsonl`` (one row per prompt) and ``<name>.meta.json`` (the key, written last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _safe_filename(name)  # appended to, never with_suffix: "qwen2.5" must not become "qwen2.jsonl"
    tmp = out_dir / f"{stem}.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for g in generations:
            f.write(json.dumps(g.to_json(), ensure_ascii=False) + "\n")
    tmp.replace(out_dir / f"{stem}.jsonl")
    write_json_atomic(out_dir / f"{stem}.meta.json", {"key": key, "num_generations": len(generations), **meta})


def load_generations(out_dir: Path, name: str, key: str, expected: int) -> list[Generation] | None:
    """The saved generations of ``name`` when their key matches ``key``, else those of another name with that key
    (one policy listed twice: the reference as the over-optimisation curve's step 0); None when there are none."""
    own = out_dir / f"{_safe_filename(name)}.meta.json"
    others = sorted(path for path in out_dir.glob("*.meta.json") if path != own) if out_dir.is_dir() else []
    for meta_path in [own, *others]:
        rows_path = meta_path.with_name(meta_path.name.removesuffix(".meta.json") + ".jsonl")
        if not (meta_path.is_file() and rows_path.is_file()):
            continue
        if json.loads(meta_path.read_text(encoding="utf-8")).get("key") != key:
            if meta_path == own:
                logger.info("%s: saved generations are for other settings or weights", name)
            continue
        with open(rows_path, encoding="utf-8") as f:
            generations = [Generation.from_json(json.loads(line)) for line in f if line.strip()]
        if len(generations) == expected:
            if meta_path != own:
                logger.info("%s: the same policy and settings as %s: its generations are reused", name, rows_path.stem)
            return generations
    return None


def import_saved_generations(gen_dir: Path, sources: Sequence[str | Path]) -> int:
    """Copy the saved answers and KL files of earlier evaluations (their ``generations/`` folders) into ``gen_dir``;
    a file already there is kept, so the first source to hold a name wins. Returns how many files were copied.

    Reuse still goes by key: a copied answer set is read only where its policy's weights, the prompts and the sampling
    settings match this evaluation's, so judging old answers again (another refusal detector, more reward models)
    costs no sampling, while changed weights are sampled again. The copies keep this evaluation self-contained.
    """
    copied = 0
    for source in sources:
        source_dir = Path(source) / GENERATIONS_DIR
        if not source_dir.is_dir():
            raise FileNotFoundError(f"generations_from: {source} holds no saved generations ({source_dir} is missing)")
        gen_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(source_dir.iterdir()):
            if path.suffix in (".jsonl", ".json") and path.is_file() and not (gen_dir / path.name).exists():
                shutil.copy2(path, gen_dir / path.name)
                copied += 1
    if copied:
        logger.info("copied %d saved generation files from %s into %s", copied, ", ".join(map(str, sources)), gen_dir)
    return copied


def _cached_kl(gen_dir: Path, name: str, key: str) -> tuple[bool, list[float] | None]:
    """(found, per-sample KL) from ``<name>.kl.json``; a found None means "not computable" (other tokenizer)."""
    path = gen_dir / f"{_safe_filename(name)}.kl.json"
    if not path.is_file():
        return False, None
    data = json.loads(path.read_text(encoding="utf-8"))
    return (True, data.get("kl")) if data.get("key") == key else (False, None)


def _save_kl(gen_dir: Path, name: str, key: str, kl: list[float] | None, note: str) -> None:
    write_json_atomic(gen_dir / f"{_safe_filename(name)}.kl.json", {"key": key, "kl": kl, "note": note})
