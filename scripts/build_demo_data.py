"""Build the project's demo data (``alignment/data/demo/*.jsonl``) from the tables in ``scripts/demo_data/``.

The one-command quickstart runs SFT -> reward model -> PPO -> evaluation on a 135M chat model on a
laptop CPU, using only these files (``dataset_name: demo``):

- ``demonstrations.jsonl``: chats in OpenAI-messages format for SFT, each with its ``category``.
  Helpful answers are one to four short sentences (they fit in ~64 new tokens); harmful requests get
  a brief refusal plus a safe alternative; risky-sounding but benign requests ("How do I kill a
  Python process?") get a genuinely helpful answer.
- ``comparisons.jsonl``: ``{"prompt", "chosen", "rejected", "category"}`` pairs, plus K = 3 records
  ``{"prompt", "responses", "ranks", "category"}`` for the K-wise ranking loss. ``helpful``: a direct,
  friendly, complete answer beats a dismissive, rambling/unfinished, off-topic or wrong one.
  ``harmless``: a brief refusal with an alternative beats a bare refusal, and both beat going along
  (vague compliance, compliance naming the request, or fluent advice for another question). ``overrefusal``: a helpful
  answer beats a needless refusal. The differences are deliberately easy to see, so a small LoRA
  reward model learns them in about one epoch.
- ``prompts.jsonl``: ``{"prompt", "label"}`` for PPO rollouts (``helpful`` / ``harmful`` / ``safe``,
  where ``safe`` means risky-sounding but benign), interleaved so any leading slice has the same mix.
- ``eval_prompts.jsonl``: the evaluation prompts, equal numbers per label, held out from every other file.

The content is hand-written in the YAML tables (short Q/A pairs by topic, harmful requests with a
safe alternative, benign requests with the word that might trigger a needless refusal, prompt-only
sets); a handful of response styles are combined with it by one seeded ``random.Random``
(``settings.yaml``), so the output is byte-for-byte reproducible. No rejected response contains
actionable harmful detail: "compliance" with a harmful request never gets past its first steps.

Regenerate the committed files from the repository root with::

    python scripts/build_demo_data.py

This script needs only the standard library and PyYAML; it imports nothing from the project.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import yaml

logger = logging.getLogger("build_demo_data")

TABLES_DIR = Path(__file__).resolve().parent / "demo_data"
OUT_DIR = Path(__file__).resolve().parent.parent / "alignment" / "data" / "demo"
FILES = ("demonstrations.jsonl", "comparisons.jsonl", "prompts.jsonl", "eval_prompts.jsonl")
LABELS = ("helpful", "harmful", "safe")  # demonstration categories and prompt labels
K3_CATEGORIES = ("helpful", "harmless", "overrefusal")  # comparison categories
STYLES = (
    "dismissive",
    "rambling",
    "refusal_openers",
    "bare_refusals",
    "vague_compliance",
    "topical_compliance",
    "overrefusals",
    "overrefusals_with_alternative",
    "hedges",
)

_SENTENCE_END = re.compile(r'(?<=[.!?])\s+|(?<=[.!?]")\s+')


# ------------------------------------------------------------------------------------------------
# Reading the tables.
# ------------------------------------------------------------------------------------------------


class Tables(NamedTuple):
    """Everything in ``scripts/demo_data/``, as the builder uses it."""

    seed: int
    demo_counts: dict[str, int]  # single-turn demonstrations per category
    k3_counts: dict[str, int]  # K = 3 comparisons per comparison category
    max_answer_words: int
    max_answer_chars: int
    helpful_qa: dict[str, list[tuple[str, str, str | None]]]  # topic -> (question, answer, wrong answer or None)
    multi_turn: list[tuple[str, list[tuple[str, str]]]]  # (category, [(role, content), ...])
    harmful: list[tuple[str, str | None, str]]  # (prompt, what is declined or None, safe alternative)
    safe: list[tuple[str, str, str]]  # (prompt, trigger word, helpful answer)
    ppo_prompts: dict[str, list[str]]  # label -> prompts
    eval_prompts: dict[str, list[str]]
    styles: dict[str, list[str]]  # response style -> templates
    refusal_topics: dict[str, str]  # helpful_qa.yaml topic -> what a needless refusal of it names


def _get(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``mapping[key]`` of type ``kind``, or a ValueError naming the table and the entry."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    if key not in mapping:
        raise ValueError(f"{where}: missing '{key}'")
    value = mapping[key]
    if not isinstance(value, kind):
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{where}: '{key}' should be {names}, got {type(value).__name__}")
    return value


def _texts(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: expected a list of non-empty strings")
    return value


def _read(tables_dir: Path, name: str) -> Any:
    with (tables_dir / name).open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_tables(tables_dir: Path = TABLES_DIR) -> Tables:
    """Read and check the YAML tables in ``tables_dir``."""
    tables_dir = Path(tables_dir)
    settings = _read(tables_dir, "settings.yaml")
    demo_counts = _get(settings, "demonstrations", dict, "settings.yaml")
    k3_counts = _get(settings, "k3_comparisons", dict, "settings.yaml")
    for key, where in (*((k, "demonstrations") for k in LABELS), *((k, "k3_comparisons") for k in K3_CATEGORIES)):
        _get(settings[where], key, int, f"settings.yaml: {where}")

    helpful_qa: dict[str, list[tuple[str, str, str | None]]] = {}
    for topic, items in _read(tables_dir, "helpful_qa.yaml").items():
        if not isinstance(items, list):
            raise ValueError(f"helpful_qa.yaml: {topic}: expected a list of question/answer entries")
        helpful_qa[topic] = []
        for i, item in enumerate(items):
            where = f"helpful_qa.yaml: {topic}[{i}]"
            wrong = _get(item, "wrong", str, where) if "wrong" in item else None
            helpful_qa[topic].append((_get(item, "question", str, where), _get(item, "answer", str, where), wrong))

    multi_turn = []
    for i, chat in enumerate(_get(_read(tables_dir, "multi_turn.yaml"), "chats", list, "multi_turn.yaml")):
        where = f"multi_turn.yaml: chats[{i}]"
        category = _get(chat, "category", str, where)
        if category not in LABELS:
            raise ValueError(f"{where}: category {category!r} is not one of {', '.join(LABELS)}")
        turns = [
            (_get(m, "role", str, f"{where}.messages[{j}]"), _get(m, "content", str, f"{where}.messages[{j}]"))
            for j, m in enumerate(_get(chat, "messages", list, where))
        ]
        multi_turn.append((category, turns))

    harmful = []
    for i, item in enumerate(_get(_read(tables_dir, "harmful.yaml"), "requests", list, "harmful.yaml")):
        where = f"harmful.yaml: requests[{i}]"
        harmful.append(
            (
                _get(item, "prompt", str, where),
                _get(item, "declined", (str, type(None)), where),
                _get(item, "alternative", str, where),
            )
        )

    safe = []
    for i, item in enumerate(_get(_read(tables_dir, "safe.yaml"), "requests", list, "safe.yaml")):
        where = f"safe.yaml: requests[{i}]"
        safe.append(
            (_get(item, "prompt", str, where), _get(item, "trigger", str, where), _get(item, "answer", str, where))
        )

    prompt_sets = {}
    for name in ("ppo_prompts.yaml", "eval_prompts.yaml"):
        table = _read(tables_dir, name)
        prompt_sets[name] = {label: _texts(_get(table, label, list, name), f"{name}: {label}") for label in LABELS}

    styles_table = _read(tables_dir, "response_styles.yaml")
    styles = {
        name: _texts(_get(styles_table, name, list, "response_styles.yaml"), f"response_styles.yaml: {name}")
        for name in STYLES
    }
    refusal_topics = _get(styles_table, "refusal_topics", dict, "response_styles.yaml")
    for topic in helpful_qa:
        _get(refusal_topics, topic, str, "response_styles.yaml: refusal_topics")

    return Tables(
        seed=_get(settings, "seed", int, "settings.yaml"),
        demo_counts=demo_counts,
        k3_counts=k3_counts,
        max_answer_words=_get(settings, "max_answer_words", int, "settings.yaml"),
        max_answer_chars=_get(settings, "max_answer_chars", int, "settings.yaml"),
        helpful_qa=helpful_qa,
        multi_turn=multi_turn,
        harmful=harmful,
        safe=safe,
        ppo_prompts=prompt_sets["ppo_prompts.yaml"],
        eval_prompts=prompt_sets["eval_prompts.yaml"],
        styles=styles,
        refusal_topics=refusal_topics,
    )


# ------------------------------------------------------------------------------------------------
# Builders.
# ------------------------------------------------------------------------------------------------


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s]


def _start(answer: str, n_words: int = 7) -> str:
    """The first words of ``answer``'s first sentence, cut so no code span or quotation is left open."""
    words = _sentences(answer)[0].split()[:n_words]
    while words and (" ".join(words).count("`") % 2 or " ".join(words).count('"') % 2):
        words.pop()
    return " ".join(words).rstrip(".,;:!?")


class _Builder:
    """The response styles and length limits of one set of tables, applied with one ``random.Random``."""

    def __init__(self, tables: Tables, rng: random.Random) -> None:
        self.tables = tables
        self.styles = tables.styles
        self.rng = rng

    def rambling(self, answer: str) -> str:
        """A reply that circles, maybe starts the right answer, and stops mid-sentence."""
        start = _start(answer)
        templates = self.styles["rambling"] if start else [t for t in self.styles["rambling"] if "{start}" not in t]
        return self.rng.choice(templates).format(start=start)

    def check_length(self, text: str, where: str) -> str:
        """``text``, unless it is too long for a ~64-token reply."""
        words, chars = self.tables.max_answer_words, self.tables.max_answer_chars
        if len(text.split()) > words or len(text) > chars:
            raise ValueError(
                f"{where}: {len(text.split())} words, {len(text)} characters "
                f"(limits {words}, {chars}): {text[:60]!r}..."
            )
        return text

    def refusal(self, what: str | None, alternative: str) -> str:
        if what is None:
            return alternative
        return f"{self.rng.choice(self.styles['refusal_openers']).format(what=what)} {alternative}"

    def compliance(self, what: str | None, pool: list[tuple[str, str, str, str | None]]) -> str:
        """A reply that goes along with a harmful request, never actionable: vague filler, compliance naming the
        request, or fluent advice for some other question (a third each; the last is what a policy that deflects
        instead of refusing writes, so the reward model learns that only a refusal answers a harmful request)."""
        style = self.rng.choice(["vague", "topical", "advice"] if what is not None else ["vague", "advice"])
        if style == "topical":
            return self.rng.choice(self.styles["topical_compliance"]).format(what=what)
        if style == "advice":
            return self.rng.choice(pool)[2]
        return self.rng.choice(self.styles["vague_compliance"])

    def overrefusal(self, trigger: str) -> str:
        """A needless refusal: blunt, or (half the time) shaped like a good refusal, with an alternative.

        Three in four shaped like a good refusal was tried: the reward model then preferred refusals on harmful
        requests too weakly (mean score +0.85 against +0.62 for SFT's other answers, from +1.68 against +0.36 at one
        in two), and PPO refused less than SFT.
        """
        style = self.rng.choice(["overrefusals", "overrefusals_with_alternative"])
        return self.rng.choice(self.styles[style]).format(trigger=trigger)

    def helpful_pool(self) -> list[tuple[str, str, str, str | None]]:
        """(topic, question, answer, wrong answer or None) for every hand-written helpful Q/A pair."""
        return [
            (topic, question, self.check_length(answer, question), wrong)
            for topic, items in self.tables.helpful_qa.items()
            for question, answer, wrong in items
        ]

    def helpful_rejected(
        self, topic: str, answer: str, wrong: str | None, pool: list[tuple[str, str, str, str | None]]
    ) -> str:
        """One unhelpful reply: dismissive, rambling and unfinished, off-topic, a needless refusal, or (where
        written) wrong.

        Off-topic replies are fluent and friendly, so telling them apart needs the prompt; they are kept
        rarer than the styles a small reward model picks up in one epoch. The needless refusals name the question's
        topic ("Sorry, I can't help with cooking."), half of them with an alternative, like a good refusal: without
        them the reward model saw refusals lose only on scary-sounding safe requests, scored PPO's refusals of
        everyday questions above SFT's answers, and PPO learned to refuse them.
        """
        styles = ["dismissive", "dismissive", "rambling", "rambling", "off_topic", "refusal", "refusal"]
        style = self.rng.choice(styles + (["wrong"] * 3 if wrong else []))
        if style == "wrong":
            return wrong
        if style == "refusal":
            return self.overrefusal(self.tables.refusal_topics[topic])
        if style == "dismissive":
            return self.rng.choice(self.styles["dismissive"])
        if style == "rambling":
            return self.rambling(answer)
        return self.rng.choice([a for t, _, a, _ in pool if t != topic])


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _demo(messages: list[dict[str, str]], category: str) -> dict:
    """A demonstration record: OpenAI messages plus its category (the loader reads only ``messages``)."""
    return {"messages": messages, "category": category}


def build(tables: Tables | None = None) -> dict[str, list[tuple[str, dict]]]:
    """Every file's records as (category, JSON object), in file order.

    The order of the ``random.Random`` calls is part of the output: changing it reshuffles the files.
    """
    tables = load_tables() if tables is None else tables
    rng = random.Random(tables.seed)
    b = _Builder(tables, rng)
    styles = tables.styles
    n_helpful, n_harmful, n_safe = (tables.demo_counts[k] for k in LABELS)
    helpful = b.helpful_pool()
    harmful = list(tables.harmful)
    safe = list(tables.safe)
    rng.shuffle(helpful)
    rng.shuffle(harmful)
    safe_order = list(range(len(safe)))
    rng.shuffle(safe_order)
    safe = [safe[i] for i in safe_order]

    # SFT demonstrations.
    demos: list[tuple[str, dict]] = []
    for _, question, answer, _ in helpful[:n_helpful]:
        demos.append(("helpful", _demo(_user(question) + [{"role": "assistant", "content": answer}], "helpful")))
    for prompt, what, alternative in harmful[:n_harmful]:
        reply = b.check_length(b.refusal(what, alternative), prompt)
        demos.append(("harmful", _demo(_user(prompt) + [{"role": "assistant", "content": reply}], "harmful")))
    for prompt, _, answer in safe[:n_safe]:
        reply = b.check_length(answer, prompt)
        demos.append(("safe", _demo(_user(prompt) + [{"role": "assistant", "content": reply}], "safe")))
    for category, turns in tables.multi_turn:
        messages = [{"role": role, "content": content} for role, content in turns]
        for m in messages:
            if m["role"] == "assistant":
                b.check_length(m["content"], "multi-turn chat")
        demos.append((category, _demo(messages, category)))
    rng.shuffle(demos)

    # Reward-model comparisons.
    comparisons: list[tuple[str, dict]] = []
    k3_left = tables.k3_counts["helpful"]
    for topic, question, answer, wrong in helpful[n_helpful:]:
        sentences = _sentences(answer)
        if k3_left and len(sentences) >= 2 and len(sentences[0].split()) >= 6:
            k3_left -= 1
            worst = rng.choice([rng.choice(styles["dismissive"]), b.rambling(answer)])
            record = {"prompt": _user(question), "responses": [answer, sentences[0], worst], "ranks": [0, 1, 2]}
        else:
            rejected = b.helpful_rejected(topic, answer, wrong, helpful)
            record = {"prompt": _user(question), "chosen": answer, "rejected": rejected}
        comparisons.append(("helpful", {**record, "category": "helpful"}))
    for i, (prompt, what, alternative) in enumerate(harmful[n_harmful:]):
        chosen = b.check_length(b.refusal(what, alternative), prompt)
        compliance = b.compliance(what, helpful)
        if i < tables.k3_counts["harmless"]:
            bare = rng.choice(styles["bare_refusals"])
            record = {"prompt": _user(prompt), "responses": [chosen, bare, compliance], "ranks": [0, 1, 2]}
        else:
            record = {"prompt": _user(prompt), "chosen": chosen, "rejected": compliance}
        comparisons.append(("harmless", {**record, "category": "harmless"}))
    for i, (prompt, trigger, answer) in enumerate(safe[n_safe:]):
        chosen = b.check_length(answer, prompt)
        refusal = b.overrefusal(trigger)
        if i < tables.k3_counts["overrefusal"]:
            hedged = rng.choice(styles["hedges"]).format(trigger=trigger, first=_sentences(answer)[0])
            record = {"prompt": _user(prompt), "responses": [chosen, hedged, refusal], "ranks": [0, 1, 2]}
        else:
            record = {"prompt": _user(prompt), "chosen": chosen, "rejected": refusal}
        comparisons.append(("overrefusal", {**record, "category": "overrefusal"}))
    rng.shuffle(comparisons)

    # PPO prompts, interleaved helpful, harmful, helpful, safe so every leading slice has the same mix.
    ppo_helpful, ppo_harmful, ppo_safe = (list(tables.ppo_prompts[k]) for k in LABELS)
    if len(ppo_helpful) != 2 * len(ppo_harmful) or len(ppo_safe) != len(ppo_harmful):
        raise ValueError(
            f"ppo_prompts.yaml: need twice as many helpful prompts as harmful ones and as many safe as harmful, "
            f"got {len(ppo_helpful)} / {len(ppo_harmful)} / {len(ppo_safe)}"
        )
    for group in (ppo_helpful, ppo_harmful, ppo_safe):
        rng.shuffle(group)
    prompts: list[tuple[str, dict]] = []
    for i in range(len(ppo_harmful)):
        for label, text in (
            ("helpful", ppo_helpful[2 * i]),
            ("harmful", ppo_harmful[i]),
            ("helpful", ppo_helpful[2 * i + 1]),
            ("safe", ppo_safe[i]),
        ):
            prompts.append((label, {"prompt": text, "label": label}))

    eval_sets = [tables.eval_prompts[k] for k in LABELS]
    if len({len(s) for s in eval_sets}) != 1:
        raise ValueError(f"eval_prompts.yaml: need equal numbers per label, got {[len(s) for s in eval_sets]}")
    eval_prompts = [
        (label, {"prompt": text, "label": label}) for triple in zip(*eval_sets) for label, text in zip(LABELS, triple)
    ]

    files = {
        "demonstrations.jsonl": demos,
        "comparisons.jsonl": comparisons,
        "prompts.jsonl": prompts,
        "eval_prompts.jsonl": eval_prompts,
    }
    _check_unique_prompts(files)
    return files


def user_texts(record: dict) -> list[str]:
    """Every user turn of a record in any of the four files."""
    if "messages" in record:
        return [m["content"] for m in record["messages"] if m["role"] == "user"]
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return [prompt]
    return [m["content"] for m in prompt if m["role"] == "user"]


def normalize_prompt(text: str) -> str:
    return " ".join(text.lower().split())


def _check_unique_prompts(files: dict[str, list[tuple[str, dict]]]) -> None:
    """No user prompt appears twice anywhere: each file, and the eval set in particular, is disjoint."""
    seen: dict[str, str] = {}
    for name, records in files.items():
        for _, record in records:
            for text in user_texts(record):
                key = normalize_prompt(text)
                if key in seen:
                    raise ValueError(f"prompt {text!r} appears in both {seen[key]} and {name}")
                seen[key] = name


def _counts(records: list[tuple[str, dict]]) -> dict[str, int]:
    counts = Counter(category for category, _ in records)
    return {**dict(sorted(counts.items())), "total": len(records)}


def main(out_dir: Path | None = None, tables_dir: Path | None = None) -> dict[str, dict[str, int]]:
    """Write the four JSONL files into ``out_dir`` (default: ``alignment/data/demo/``); return counts per category."""
    out_dir = OUT_DIR if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = build(load_tables(TABLES_DIR if tables_dir is None else Path(tables_dir)))
    summary = {}
    for name, records in files.items():
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for _, record in records)
        path = out_dir / name
        summary[name] = _counts(records)
        # An unchanged file is left as it is: its modification time is part of the identity of the runs that read it.
        if path.is_file() and path.read_text(encoding="utf-8") == lines:
            logger.info("unchanged %s: %s", path, summary[name])
            continue
        path.write_text(lines, encoding="utf-8", newline="\n")
        logger.info("wrote %s: %s", path, summary[name])
    k_wise = sum(1 for _, r in files["comparisons.jsonl"] if "responses" in r)
    summary["comparisons.jsonl"]["k3"] = k_wise
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where to write the JSONL files (%(default)s)")
    parser.add_argument("--tables", type=Path, default=TABLES_DIR, help="the YAML tables to read (%(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(args.out_dir, args.tables)
