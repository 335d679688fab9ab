"""Run identity: what a run directory holds a run *of*, so a re-run never mixes in stale or foreign state.

Every run directory records ``run_identity.json``: the resolved settings that shape the result, a digest of each
input it read (an earlier stage's identity, or a hash of a data file's bytes) and a fingerprint of both.
Before a stage writes anything, :func:`prepare_output_dir` compares the directory with the run about to start:

- an empty or missing directory is used;
- a directory holding a run of the *same* fingerprint is resumed with ``resume``, started over with
  ``overwrite``, and otherwise refused (a silent restart would mix the two runs' checkpoints and logs);
- a directory holding a run of *other* settings or inputs is refused with the changed keys named, unless
  ``overwrite`` is set;
- a non-empty directory that is not a run directory is always refused: it is someone's files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from alignment.core.config import Config, ConfigError
from alignment.core.precision import resolve_bf16

logger = logging.getLogger(__name__)

IDENTITY_FILE = "run_identity.json"
# Settings that change where or how often things are written, or how fast, but not what is learned.
NOT_IDENTITY = frozenset(
    {
        "output_dir",
        "resume",
        "overwrite",
        "report_to",
        "fsdp",  # how the processes hold the model; FSDP and DDP make the same updates (tests/stages)
        "share_prompts",  # a batch layout, like packing: the same rewards and gradients (tests/stages/test_reward.py)
        "share_prefixes",  # the same for SFT (tests/stages/test_sft.py)
        "generation_batch_size",  # each answer has its own random stream (tests/stages/test_evaluate_stage.py)
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "sample_table_steps",
        "policy_snapshots",
    }
)
# Settings added after runs were made, recorded only when set: at their default they change nothing those runs
# learned, so a finished run keeps its identity (and is not run again) when the project adds one.
OMITTED_AT_DEFAULT = {
    "prompt_labels": {},
    "reward_weights_by_label": {},
    "select_rows": {},
    "refusal_reward_by_label": {},
    "refusal_reward_detector": "phrase",
    "second_refusal_detector": "phrase",
    "generation_weights": "auto",
    "stratify_by_label": False,
    "refusal_reward_baseline": "group",
    "ptx_coef": 0.0,
    "ptx_dataset_name": None,
    "ptx_batch_size": 4,
    "ptx_select_rows": {},
    "answers_per_prompt": 1,
}
# Settings that name something read from disk: their content (not only their name) is part of the identity.
INPUT_KEYS = (
    "model_name_or_path",
    "tokenizer_name_or_path",
    "sft_model_path",
    "reward_model_paths",
    "cost_model_path",
    "policies",
    "dataset_name",
    "dataset_mixture",
    "eval_dataset_name",
    "ptx_dataset_name",
    "prompt_sets",
    "checkpoint_dirs",
)
# Where ``dataset_name: demo`` reads (alignment.data.demo.DEMO_DIR; core does not import the data layer), and which
# of its files each stage kind reads: a new version of that file is a new input to the stage.
BUILTIN_DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"
DEMO_FILE_BY_STAGE = {
    "sft": "demonstrations.jsonl",
    "reward": "comparisons.jsonl",
    "dpo": "comparisons.jsonl",
    "ppo": "prompts.jsonl",
}
DEMO_EVAL_PROMPTS = "eval_prompts.jsonl"  # prompt_sets: [demo]
DEMO_FILE_BY_KEY = {"prompt_sets": DEMO_EVAL_PROMPTS, "ptx_dataset_name": "demonstrations.jsonl"}
# Files a run writes at its top level; a directory holding only these (and checkpoints/) is a run directory.
RUN_MARKERS = ("config.yaml", "versions.json")


def stage_kind(cfg: Config) -> str:
    """The stage kind a config belongs to, told by its own section (``ppo``, ``evaluate``, ``reward``, ``dpo``),
    else ``sft``."""
    sections = cfg.sections()
    return next((kind for kind in ("ppo", "evaluate", "reward", "dpo") if kind in sections), "sft")


def run_settings(cfg: Config) -> dict[str, Any]:
    settings = {
        k: v
        for k, v in sorted(cfg.flat().items())
        if k not in NOT_IDENTITY and not (k in OMITTED_AT_DEFAULT and v == OMITTED_AT_DEFAULT[k])
    }
    if settings.get("bf16") == "auto":  # what this machine makes of it: an auto run is the same run as its choice
        settings["bf16"] = resolve_bf16("auto", bool(settings.get("cpu")))
    return settings


def input_digest(path: str) -> str | None:
    """An earlier run's fingerprint (a folder inside a run, such as a PPO snapshot, takes its run's), or a local
    file's content hash; None for a name (Hub id, embedded model)."""
    location = Path(path).expanduser()
    for run in [location, *location.parents][:3] if location.is_dir() else []:
        identity = read_identity(run)
        if identity is not None:
            inside = location.relative_to(run).as_posix()
            return identity["fingerprint"] + ("" if inside == "." else f":{inside}")
    if location.is_file():
        stat = location.stat()
        return _content_digest(str(location.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    return None


@functools.lru_cache(maxsize=256)
def _content_digest(path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """``sha256:<16 hex>`` of a file's bytes. By content, not by size and time: a copy of the same data (a fresh
    checkout, data synced to another machine, a re-mounted share) is the same input and re-runs nothing, and an
    edit that keeps the size and time still counts. Cached within a process per (path, size, mtime, ctime: which
    no write can keep), because a pipeline asks for each input once per stage it plans."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


def _input_paths(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, path)`` for every input a setting names (list-valued settings give one pair per item)."""
    pairs = []
    for key in INPUT_KEYS:
        value = settings.get(key)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and item:
                pairs.append((key, _without_row_range(item)))
    return pairs


def _without_row_range(source: str) -> str:
    """``file.jsonl[0:750]`` -> ``file.jsonl``: the file a data source with a row range reads (the range itself is
    part of the settings)."""
    return re.sub(r"\[\d*:\d*\]$", "", source)


def looks_local(name: str) -> bool:
    """A path prefix, a data-file suffix, or a parent folder that exists here: a local path, never a Hub id."""
    path = Path(name).expanduser()
    suffixes = (".json", ".jsonl", ".gz", ".csv", ".parquet", ".gguf", ".yaml")
    return name.startswith((".", "/", "~")) or name.endswith(suffixes) or (len(path.parts) > 1 and path.parent.is_dir())


def check_inputs_exist(cfg: Config) -> None:
    """Every input named by a local-looking path exists: a typo fails here, before anything is loaded or written."""
    for key, path in _input_paths(cfg.flat()):
        if looks_local(path) and not Path(path).expanduser().exists():
            raise ConfigError(f"{key}: {path} not found (no such file or directory)")


def run_identity(cfg: Config, known_inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """The identity of the run ``cfg`` describes. ``known_inputs``: digests of inputs not on disk yet (a pipeline
    plans its later stages before the earlier ones have run)."""
    settings = run_settings(cfg)
    known = known_inputs or {}
    stage = stage_kind(cfg)
    inputs = {}
    for key, path in _input_paths(settings):
        if path == "demo":  # the built-in data: the one file of it this stage reads
            name = DEMO_FILE_BY_KEY.get(key) or DEMO_FILE_BY_STAGE.get(stage)
            if name is not None:
                inputs[f"demo:{name}"] = input_digest(str(BUILTIN_DEMO_DIR / name))
            continue
        inputs[path] = known[path] if path in known else input_digest(path)
    payload = json.dumps({"settings": settings, "inputs": inputs}, sort_keys=True, default=str)
    return {"fingerprint": hashlib.sha256(payload.encode()).hexdigest()[:16], "settings": settings, "inputs": inputs}


def read_identity(output_dir: str | Path) -> dict[str, Any] | None:
    path = Path(output_dir) / IDENTITY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "fingerprint" in data else None


def write_identity(output_dir: str | Path, identity: dict[str, Any]) -> None:
    path = Path(output_dir) / IDENTITY_FILE
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(identity, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def describe_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """``lora_r 16 -> 4, dataset_name demo -> x.jsonl, input runs/sft changed``: what differs between two runs."""
    changes = []
    old_settings, new_settings = old.get("settings", {}), new.get("settings", {})
    for key in sorted(set(old_settings) | set(new_settings)):
        if old_settings.get(key) != new_settings.get(key):
            changes.append(f"{key} {old_settings.get(key)!r} -> {new_settings.get(key)!r}")
    old_inputs, new_inputs = old.get("inputs", {}), new.get("inputs", {})
    for path in sorted(set(old_inputs) & set(new_inputs)):
        if old_inputs[path] != new_inputs[path]:
            changes.append(f"input {path} changed")
    if len(changes) > limit:
        changes = [*changes[:limit], f"and {len(changes) - limit} more"]
    return ", ".join(changes) or "the recorded identity is from another version"


def is_run_directory(output_dir: Path) -> bool:
    return read_identity(output_dir) is not None or all((output_dir / m).is_file() for m in RUN_MARKERS)


def check_output_dir(output_dir: str | Path, identity: dict[str, Any], resume: bool, overwrite: bool) -> str:
    """What to do with ``output_dir`` for the run about to start (see the module docstring); reads only.

    Returns ``"new"`` (missing or empty), ``"resume"`` (this very run, to be continued) or ``"overwrite"`` (a run
    directory to clear first). Raises :class:`ConfigError`, naming the choices, before anything is written.
    """
    out = Path(output_dir)
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file, not a directory")
    if not any(out.iterdir()):
        return "new"
    if not is_run_directory(out):
        raise ConfigError(
            f"output_dir {out} is not empty and is not a run directory: refusing to write there (it would replace "
            "files in it). Choose a new or empty --output_dir."
        )
    if overwrite:
        return "overwrite"
    recorded = read_identity(out)
    same = recorded is not None and recorded["fingerprint"] == identity["fingerprint"]
    if same and resume:
        return "resume"
    if same:
        raise ConfigError(
            f"output_dir {out} already holds a run of these settings: pass --resume true to continue it, "
            "--overwrite true to start over, or choose another --output_dir"
        )
    what = describe_changes(recorded, identity) if recorded is not None else "it was written by an earlier version"
    raise ConfigError(
        f"output_dir {out} holds a run of other settings ({what}): pass --overwrite true to replace it, choose "
        "another --output_dir, or run with that run's settings"
    )


def clear_run_directory(output_dir: Path) -> None:
    """Empty a verified run directory (never called on a folder :func:`is_run_directory` rejects)."""
    if not is_run_directory(output_dir):
        raise ConfigError(f"{output_dir} is not a run directory: not clearing it")
    for entry in output_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
