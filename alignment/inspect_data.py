"""Look at a dataset before training on it: ``alignment data inspect SOURCE``.

Reports the detected format, how many records of each kind it gives, the invalid records by
reason, token-length statistics of the records as the model will see them (rendered with the
tokenizer's chat template, as :mod:`alignment.data.collate` renders them) and two rendered examples.
The lengths tell you what ``max_length`` truncates before a run spends hours on it.

Usage: ``alignment data inspect SOURCE [--model_name_or_path X] [--dataset_format F] [--invalid_records raise]``
(invalid records are counted by reason unless ``--invalid_records raise`` asks to stop at the first one).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from alignment.core.config import ConfigError, DataConfig, ModelConfig
from alignment.core.config_parsing import parse_config
from alignment.data.chat_template import has_chat_template, render_prompt
from alignment.data.load import DETECTION_ROWS, load_records, resolve_format, resolve_source
from alignment.data.readers import read_rows
from data_schemas.errors import RecordError
from data_schemas.formats import KINDS
from data_schemas.records import Comparison, Demonstration, Message, Record

_EXAMPLE_CHARS = 1500


def render_record(tokenizer: Any, record: Record) -> list[str]:
    """The texts the model reads for one record: the chat, each (prompt + response), or the prompt before generation."""
    if isinstance(record, Demonstration):
        return [render_prompt(tokenizer, record.messages, add_generation_prompt=False)]
    if isinstance(record, Comparison):
        return [
            render_prompt(tokenizer, (*record.prompt, Message("assistant", r)), add_generation_prompt=False)
            for r in record.responses
        ]
    return [render_prompt(tokenizer, record.messages, add_generation_prompt=True)]


def length_stats(lengths: Sequence[int]) -> dict[str, int]:
    """min / median / p95 (nearest rank) / max of token counts; empty dict for no lengths."""
    if not lengths:
        return {}
    ordered = sorted(lengths)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {"min": ordered[0], "median": int(statistics.median(ordered)), "p95": p95, "max": ordered[-1]}


def token_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts of rendered texts (templated text already carries its special tokens)."""
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    return [len(ids) for ids in encoded]


def _clip(text: str, limit: int = _EXAMPLE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + " [...]"


def _example(tokenizer: Any, record: Record) -> str:
    """One record rendered as the model reads it; a Comparison shows its prompt once, then each ranked response."""
    if not isinstance(record, Comparison):
        return _clip(render_record(tokenizer, record)[0])
    prompt = render_prompt(tokenizer, record.prompt, add_generation_prompt=True)
    ranked = sorted(zip(record.ranks, record.responses))
    return _clip(prompt) + "".join(f"\n[rank {rank}] {_clip(text, _EXAMPLE_CHARS // 3)}" for rank, text in ranked)


def _inspect_kind(data_cfg: DataConfig, kind: str, tokenizer: Any, num_examples: int) -> dict[str, Any]:
    record_set = load_records(data_cfg, kind)
    texts = [t for r in record_set.records for t in render_record(tokenizer, r)]
    return {
        "format": record_set.format,
        "records": len(record_set.records),
        "rows": record_set.rows_read,
        "invalid": dict(record_set.skipped.by_reason.most_common()),
        "invalid_examples": list(record_set.skipped.examples),
        "tokens": length_stats(token_lengths(tokenizer, texts)),
        "sequences": len(texts),
        "examples": [_example(tokenizer, r) for r in record_set.records[:num_examples]],
    }


def inspect_source(
    path_or_id: str,
    tokenizer: Any,
    format: str = "auto",
    kind: str | None = None,
    invalid: str = "skip",
    data_cfg: DataConfig | None = None,
    num_examples: int = 2,
) -> dict[str, Any]:
    """What a source holds, per record kind (all kinds its format gives when ``kind`` is None).

    ``data_cfg`` carries Hub settings (subset, data_dir, split) and ``max_samples``; its
    ``dataset_name``, ``dataset_format`` and ``invalid_records`` are replaced by the arguments.
    """
    base = data_cfg or DataConfig()
    cfg = dataclasses.replace(
        base, dataset_name=path_or_id, dataset_format=format, invalid_records=invalid, eval_split_size=0.0
    )
    if path_or_id == "demo":  # one built-in file per kind, each in its own format
        kinds = [kind] if kind else list(KINDS)
        per_kind = {k: _inspect_kind(cfg, k, tokenizer, num_examples) for k in kinds}
        formats = sorted({info["format"] for info in per_kind.values()})
        return _report("demo", "/".join(formats), kinds, tokenizer, per_kind)
    source = resolve_source(cfg, kind or "demonstration")
    fmt = resolve_format(format, list(itertools.islice(read_rows(source, cfg), DETECTION_ROWS)), source)
    cfg = dataclasses.replace(cfg, dataset_format=fmt.name)
    kinds = [kind] if kind else list(fmt.kinds)
    per_kind = {k: _inspect_kind(cfg, k, tokenizer, num_examples) for k in kinds}
    return _report(source, fmt.name, list(fmt.kinds), tokenizer, per_kind)


def _report(source: str, fmt: str, kinds: list[str], tokenizer: Any, per_kind: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": source,
        "format": fmt,
        "format_kinds": kinds,
        "chat_template": has_chat_template(tokenizer),
        "kinds": per_kind,
    }


def format_report(report: dict[str, Any]) -> str:
    """The inspection as text for a terminal."""
    lines = [
        f"source:  {report['source']}",
        f"format:  {report['format']} (gives: {', '.join(report['format_kinds'])})",
    ]
    if not report.get("chat_template", True):
        lines.append(
            "note:    the tokenizer has no chat template; lengths use the plain 'User: / Assistant:' rendering"
        )
    for kind, info in report["kinds"].items():
        lines += ["", f"{kind}: {info['records']} records from {info['rows']} rows"]
        invalid = info["invalid"]
        if invalid:
            total = sum(invalid.values())
            lines.append(f"  invalid: {total} skipped (" + ", ".join(f"{k}: {v}" for k, v in invalid.items()) + ")")
            lines += [f"    e.g. {e}" for e in info["invalid_examples"][:3]]
        else:
            lines.append("  invalid: none")
        tokens = info["tokens"]
        if tokens:
            stats = ", ".join(f"{k} {v}" for k, v in tokens.items())
            lines.append(f"  tokens per sequence ({info['sequences']} sequences): {stats}")
        for i, example in enumerate(info["examples"], start=1):
            lines += [f"  example {i}:", *("    " + line for line in example.splitlines())]
    return "\n".join(lines)


CONFIG_TYPES = (ModelConfig, DataConfig)
USAGE = "usage: alignment data inspect SOURCE [--model_name_or_path X] [--dataset_format F] [--invalid_records raise]"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``alignment data inspect SOURCE [--key value ...]``; returns the report (see :func:`inspect_source`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE + "\n")
        raise SystemExit(0)
    if len(argv) < 2 or argv[0] != "inspect" or argv[1].startswith("--"):
        raise ConfigError(f"expected `inspect SOURCE`\n{USAGE}")
    cfg = parse_config(CONFIG_TYPES, argv[2:], prog="alignment data inspect SOURCE")
    from alignment.modeling.tokenizer import load_tokenizer  # imports transformers: not at --help

    # Inspecting reports every invalid record by reason unless asked to stop at the first one.
    invalid = cfg.data.invalid_records if any(a.startswith("--invalid_records") for a in argv) else "skip"
    data_cfg = dataclasses.replace(cfg.data, dataset_name=argv[1], invalid_records=invalid)
    try:
        return inspect_source(
            argv[1],
            load_tokenizer(cfg.model),
            cfg.data.dataset_format,
            invalid=invalid,
            data_cfg=data_cfg,
        )
    except RecordError:
        raise
    except ValueError as e:  # unknown format, a kind the format cannot give: user input, not a crash
        raise ConfigError(str(e)) from None


summary_text = format_report  # what ``alignment data inspect`` prints
