"""The human-labelled responses the refusal detector is fitted and measured on, read with errors that name the line.

Two sources. XSTest v2 (Röttger et al. 2024, arXiv:2308.01263; CC-BY-4.0): the completions of three chat models
(``gpt4``, ``llama2new``, ``mistralinstruct``) to the 450 XSTest prompts, each labelled by two annotators as full
compliance, full refusal or partial refusal, read from ``../shared/data`` (not shipped). And the project's policy
sample, shipped in the package: answers of this project's own 135M policies, each labelled refusal or not by hand.
Following XSTest, a *refusal* is a full or a partial refusal.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from alignment.modeling.refusal_classifier import SHIPPED_DIR

XSTEST_MODELS: tuple[str, ...] = ("gpt4", "llama2new", "mistralinstruct")
XSTEST_COMPLETIONS_DIR = "safety/xstest-completions"
XSTEST_LICENSE_FILE = "safety/xstest-LICENSE"
XSTEST_LABELS = {
    "1_full_compliance": "full_compliance",
    "2_full_refusal": "full_refusal",
    "3_partial_refusal": "partial_refusal",
}


@dataclass(frozen=True)
class LabelledCompletion:
    """One model's response to one prompt with the annotators' final label; ``group`` names the policy that wrote it
    where one source holds several (the project's policy sample)."""

    id: str
    prompt_type: str
    prompt: str
    completion: str
    label: str  # full_compliance | full_refusal | partial_refusal
    group: str = ""

    @property
    def is_refusal(self) -> bool:
        return self.label != "full_compliance"


def xstest_completions_path(data_dir: Path, model: str) -> Path:
    return Path(data_dir) / XSTEST_COMPLETIONS_DIR / f"xstest_v2_completions_{model}.csv"


def read_xstest_completions(data_dir: Path, model: str) -> list[LabelledCompletion]:
    """The labelled completions of ``model``; errors name the file, line and field."""
    path = xstest_completions_path(data_dir, model)
    if not path.is_file():
        raise FileNotFoundError(f"XSTest completions not found: {path}")
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            label = XSTEST_LABELS.get((row.get("final_label") or "").strip())
            if label is None:
                raise ValueError(
                    f"{path}:{reader.line_num}: final_label {row.get('final_label')!r} is none of {list(XSTEST_LABELS)}"
                )
            rows.append(LabelledCompletion(row["id"], row["type"], row["prompt"], row["completion"] or "", label))
    return rows


POLICY_SAMPLE_SOURCE = "smollm2-135m-policies"
POLICY_SAMPLE_PATH = SHIPPED_DIR / "policy_sample_labels.jsonl"  # shipped beside the head it helps fit
POLICY_SAMPLE_FIELDS = ("policy", "prompt_set", "prompt_label", "prompt_index", "response", "refusal")


def read_policy_sample(path: Path) -> list[LabelledCompletion]:
    """Hand-labelled answers of the project's policies (JSON lines: ``POLICY_SAMPLE_FIELDS``; ``refusal`` a bool).

    The labels say refusal or not (XSTest's convention: a full or partial refusal) without telling the two kinds of
    refusal apart, so a refusal here reads as ``full_refusal``. Errors name the file, line and field.
    """
    rows = []
    for line_number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{line_number}: not JSON ({e.msg})") from None
        missing = [name for name in POLICY_SAMPLE_FIELDS if name not in row]
        if missing:
            raise ValueError(f"{path}:{line_number}: missing field {missing[0]!r}")
        if not isinstance(row["refusal"], bool):
            raise ValueError(f"{path}:{line_number}: field 'refusal' must be true or false, got {row['refusal']!r}")
        if not isinstance(row["response"], str):
            raise ValueError(f"{path}:{line_number}: field 'response' must be a string")
        rows.append(
            LabelledCompletion(
                id=f"{row['policy']}/{row['prompt_set']}/{row['prompt_index']}",
                prompt_type=str(row["prompt_label"]),
                prompt="",  # the prompts stay in their datasets, named by set and index
                completion=row["response"],
                label="full_refusal" if row["refusal"] else "full_compliance",
                group=str(row["policy"]),
            )
        )
    return rows
