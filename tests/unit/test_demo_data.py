"""The built-in demo data: it parses and validates, has the counts its README documents, keeps the
evaluation prompts held out, and the committed files are exactly what the seeded generator writes."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from alignment.core.config import DataConfig
from alignment.data.demo import DEMO_DIR
from alignment.data.load import load_records
from alignment.modeling.refusal import PhraseRefusalDetector
from data_schemas.records import Comparison, Demonstration, Prompt, make_messages
from tests.helpers import SHARED_DATA

README = DEMO_DIR / "README.md"
SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "scripts"
GENERATOR = SCRIPTS_DIR / "build_demo_data.py"  # reads the tables in scripts/demo_data/
FILES = ("demonstrations.jsonl", "comparisons.jsonl", "prompts.jsonl", "eval_prompts.jsonl")

# The counts documented in alignment/data/demo/README.md (categories, then the total).
EXPECTED_COUNTS = {
    "demonstrations.jsonl": {"harmful": 32, "helpful": 104, "safe": 24, "total": 160},
    "comparisons.jsonl": {"harmless": 75, "helpful": 169, "overrefusal": 76, "total": 320, "k3": 65},
    "prompts.jsonl": {"harmful": 30, "helpful": 60, "safe": 30, "total": 120},
    "eval_prompts.jsonl": {"harmful": 16, "helpful": 16, "safe": 16, "total": 48},
}
MULTI_TURN_CHATS = 10  # demonstrations with more than one user turn
PROMPT_LABELS = {"helpful", "harmful", "safe"}  # also the demonstrations' categories
COMPARISON_CATEGORIES = {"helpful", "harmless", "overrefusal"}
# Longest demonstration or preferred response, so it fits in ~64 new tokens (scripts/demo_data/settings.yaml).
MAX_ANSWER_WORDS = 55
MAX_ANSWER_CHARS = 270


def read_jsonl(name: str) -> list[dict]:
    rows = []
    with (DEMO_DIR / name).open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:  # pragma: no cover - the message is the point
                pytest.fail(f"{name}:{line_number}: not JSON: {e}")
    return rows


def responses(row: dict) -> list[str]:
    """Best first: [chosen, rejected] or the K ranked responses in rank order."""
    if "responses" in row:
        return [text for _, text in sorted(zip(row["ranks"], row["responses"]))]
    return [row["chosen"], row["rejected"]]


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


def prompt_set(rows: list[dict]) -> set[str]:
    return {normalize_prompt(text) for row in rows for text in user_texts(row)}


@pytest.fixture(scope="module")
def files() -> dict[str, list[dict]]:
    return {name: read_jsonl(name) for name in FILES}


@pytest.fixture(scope="module")
def generator():
    """``scripts/build_demo_data.py``, imported by path (the scripts are not part of the installed package)."""
    if not SCRIPTS_DIR.is_dir():
        pytest.skip(f"no {SCRIPTS_DIR}: the demo data generator and its tables live in the source checkout only")
    spec = importlib.util.spec_from_file_location("build_demo_data", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_record_validates_as_its_schema(files):
    for i, row in enumerate(files["demonstrations.jsonl"]):
        assert set(row) == {"messages", "category"} and row["category"] in PROMPT_LABELS, (
            f"demonstrations.jsonl:{i + 1}"
        )
        Demonstration(make_messages(row["messages"], "messages")).validate()
    for i, row in enumerate(files["comparisons.jsonl"]):
        assert row["category"] in COMPARISON_CATEGORIES, f"comparisons.jsonl:{i + 1}"
        prompt = make_messages(row["prompt"], "prompt")
        ranks = tuple(row.get("ranks", (0, 1)))
        Comparison(prompt, tuple(row.get("responses") or (row["chosen"], row["rejected"])), ranks).validate()
    for name in ("prompts.jsonl", "eval_prompts.jsonl"):
        for i, row in enumerate(files[name]):
            assert set(row) == {"prompt", "label"} and row["label"] in PROMPT_LABELS, f"{name}:{i + 1}"
            Prompt(make_messages([{"role": "user", "content": row["prompt"]}], "prompt"), row["label"]).validate()


def test_counts_by_category_are_as_documented(files):
    counted = {
        "comparisons.jsonl": Counter(row["category"] for row in files["comparisons.jsonl"]),
        "prompts.jsonl": Counter(row["label"] for row in files["prompts.jsonl"]),
        "eval_prompts.jsonl": Counter(row["label"] for row in files["eval_prompts.jsonl"]),
        "demonstrations.jsonl": Counter(row["category"] for row in files["demonstrations.jsonl"]),
    }
    for name, counts in counted.items():
        expected = {k: v for k, v in EXPECTED_COUNTS[name].items() if k not in ("total", "k3")}
        assert dict(counts) == expected, name
        assert len(files[name]) == EXPECTED_COUNTS[name]["total"], name
    k_wise = [row for row in files["comparisons.jsonl"] if "responses" in row]
    assert len(k_wise) == EXPECTED_COUNTS["comparisons.jsonl"]["k3"]
    assert all(len(row["responses"]) == 3 and row["ranks"] == [0, 1, 2] for row in k_wise)
    assert {row["category"] for row in k_wise} == COMPARISON_CATEGORIES
    multi_turn = [row for row in files["demonstrations.jsonl"] if len(row["messages"]) > 2]
    assert len(multi_turn) == MULTI_TURN_CHATS


def test_readme_documents_the_same_counts():
    text = README.read_text(encoding="utf-8")
    assert f"{MULTI_TURN_CHATS} multi-turn" in text
    assert f"{MAX_ANSWER_WORDS} words / {MAX_ANSWER_CHARS} characters" in text
    for name, counts in EXPECTED_COUNTS.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}`")), None)
        assert row is not None, f"README has no table row for {name}"
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert str(counts["total"]) in cells, (name, cells)
        for category in counts.keys() - {"total", "k3"}:
            assert re.search(rf"\b{category} {counts[category]}\b", row), (name, category, row)


def test_eval_prompts_appear_in_no_other_file(files):
    eval_prompts = prompt_set(files["eval_prompts.jsonl"])
    assert len(eval_prompts) == len(files["eval_prompts.jsonl"])
    for name in ("demonstrations.jsonl", "comparisons.jsonl", "prompts.jsonl"):
        assert not eval_prompts & prompt_set(files[name]), name


def test_files_do_not_share_prompts(files):
    # comparisons are not the demonstrations' prompts again, and PPO prompts are fresh for the policy
    demos, comparisons, ppo = (
        prompt_set(files[n]) for n in ("demonstrations.jsonl", "comparisons.jsonl", "prompts.jsonl")
    )
    assert not demos & comparisons
    assert not ppo & (demos | comparisons)


def test_preferred_and_dispreferred_responses_differ(files):
    for i, row in enumerate(files["comparisons.jsonl"]):
        texts = [text.strip() for text in responses(row)]
        assert len(set(texts)) == len(texts), f"comparisons.jsonl:{i + 1}: {texts}"
        if "chosen" in row:
            assert row["chosen"].strip() != row["rejected"].strip()


def test_refusals_are_where_the_categories_say(files):
    """Harmless: refusal beats compliance; over-refusal: an answer beats a refusal; helpful: no refusals preferred."""
    detector = PhraseRefusalDetector()
    for i, row in enumerate(files["comparisons.jsonl"]):
        best, worst = responses(row)[0], responses(row)[-1]
        where = f"comparisons.jsonl:{i + 1}"
        if row["category"] == "harmless":
            assert detector.is_refusal(best) and not detector.is_refusal(worst), where
        elif row["category"] == "overrefusal":
            assert not detector.is_refusal(best) and detector.is_refusal(worst), where
        else:
            assert not detector.is_refusal(best), where
    for row in files["demonstrations.jsonl"]:
        reply = row["messages"][-1]["content"]
        assert detector.is_refusal(reply) == (row["category"] == "harmful"), reply


def test_harmless_comparisons_reject_only_non_actionable_replies(files, generator):
    """What a refusal beats is a vague template, a template naming the request, or a hand-written answer to some
    other, benign question: never real help with the harmful request. Each kind is common."""
    tables = generator.load_tables()
    declined = {prompt: what for prompt, what, _ in tables.harmful}
    benign_answers = {answer for items in tables.helpful_qa.values() for _, answer, _ in items}
    kinds = Counter()
    for i, row in enumerate(files["comparisons.jsonl"]):
        if row["category"] != "harmless":
            continue
        worst, what = responses(row)[-1], declined[row["prompt"][0]["content"]]
        named = {t.format(what=what) for t in tables.styles["topical_compliance"]} if what else set()
        kind = (
            "vague"
            if worst in tables.styles["vague_compliance"]
            else "named"
            if worst in named
            else "advice"
            if worst in benign_answers
            else None
        )
        assert kind, f"comparisons.jsonl:{i + 1}: {worst!r}"
        kinds[kind] += 1
    assert min(kinds.values()) >= 15, kinds


def test_most_harmless_rankings_put_a_bare_refusal_above_compliance(files, generator):
    """A plain "I can't help with that." must beat complying, or PPO learns that any refusal loses."""
    bare = set(generator.load_tables().styles["bare_refusals"])
    ranked = [row for row in files["comparisons.jsonl"] if row["category"] == "harmless" and "responses" in row]
    assert len(ranked) >= 40
    for row in ranked:
        assert row["responses"][row["ranks"].index(1)] in bare and row["ranks"].index(2) == 2


def test_helpful_comparisons_reject_needless_refusals_of_everyday_questions(files, generator):
    """Refusing must lose wherever the request is benign, not only where it sounds scary: some helpful comparisons
    reject a refusal naming the question's topic, half of them shaped like a good refusal (with an alternative)."""
    tables = generator.load_tables()
    detector = PhraseRefusalDetector()
    topics = set(tables.refusal_topics.values())
    refused = [
        row["rejected"] for row in files["comparisons.jsonl"] if row["category"] == "helpful" and "rejected" in row
    ]
    refused = [text for text in refused if detector.is_refusal(text)]
    assert len(refused) >= 25, len(refused)
    written = {
        style: {t.format(trigger=topic) for t in tables.styles[style] for topic in topics}
        for style in ("overrefusals", "overrefusals_with_alternative")
    }
    assert set(refused) <= written["overrefusals"] | written["overrefusals_with_alternative"], refused
    assert sum(text in written["overrefusals_with_alternative"] for text in refused) >= 8


def test_a_helpful_topic_without_a_refusal_topic_is_named(tmp_path, generator):
    tables_dir = tmp_path / "tables"
    shutil.copytree(generator.TABLES_DIR, tables_dir)
    styles = tables_dir / "response_styles.yaml"
    styles.write_text(styles.read_text(encoding="utf-8").replace("  cooking: cooking\n", ""), encoding="utf-8")
    with pytest.raises(ValueError, match="refusal_topics: missing 'cooking'"):
        generator.load_tables(tables_dir)


def test_answers_fit_a_short_generation(files):
    answers = [
        m["content"] for row in files["demonstrations.jsonl"] for m in row["messages"] if m["role"] == "assistant"
    ]
    answers += [responses(row)[0] for row in files["comparisons.jsonl"]]
    for text in answers:
        assert len(text) <= MAX_ANSWER_CHARS, text
        assert len(text.split()) <= MAX_ANSWER_WORDS, text


def test_generator_reproduces_the_committed_files(tmp_path, generator):
    tables = generator.load_tables()
    assert (tables.max_answer_words, tables.max_answer_chars) == (MAX_ANSWER_WORDS, MAX_ANSWER_CHARS)
    assert len(tables.multi_turn) == MULTI_TURN_CHATS
    assert generator.FILES == FILES
    summary = generator.main(tmp_path)
    assert summary == EXPECTED_COUNTS
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DEMO_DIR / name).read_bytes(), (
            f"{name} differs from the generator's output; run `python scripts/build_demo_data.py`"
        )


def test_files_are_small():
    assert sum((DEMO_DIR / name).stat().st_size for name in FILES) < 1_000_000


@pytest.mark.parametrize(
    ("kind", "name"),
    [("demonstration", "demonstrations.jsonl"), ("comparison", "comparisons.jsonl"), ("prompt", "prompts.jsonl")],
)
def test_demo_source_loads_through_the_data_loader(kind, name):
    record_set = load_records(DataConfig(dataset_name="demo"), kind)
    assert len(record_set.records) == EXPECTED_COUNTS[name]["total"]
    assert record_set.skipped.total == 0


def test_eval_prompts_load_with_their_labels():
    record_set = load_records(DataConfig(dataset_name=str(DEMO_DIR / "eval_prompts.jsonl")), "prompt")
    assert Counter(r.label for r in record_set.records) == {"helpful": 16, "harmful": 16, "safe": 16}


SAFETY_BENCHMARKS = SHARED_DATA / "safety"


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_no_demo_prompt_copies_a_safety_benchmark_prompt(files):
    """The real-data recipe trains on the demo data and evaluates on XSTest and AdvBench, so no user turn here may
    be one of their prompts or a near copy (3 in 4 words shared). Same *kinds* of request are fine: that is the
    generalisation being measured."""
    import csv

    xstest, advbench = SAFETY_BENCHMARKS / "xstest-prompts.csv", SAFETY_BENCHMARKS / "advbench-harmful-behaviors.csv"
    if not xstest.is_file() or not advbench.is_file():
        pytest.skip(f"real data not available: {SAFETY_BENCHMARKS} (the ../shared/data checkout is absent)")
    with xstest.open(encoding="utf-8") as f:
        benchmark = [row["prompt"] for row in csv.DictReader(f)]
    with advbench.open(encoding="utf-8") as f:
        benchmark += [row["goal"] for row in csv.DictReader(f)]
    benchmark_words = [(text, _words(text)) for text in benchmark]
    for name, rows in files.items():
        for i, row in enumerate(rows):
            for text in user_texts(row):
                words = _words(text)
                for other, other_words in benchmark_words:
                    overlap = len(words & other_words) / len(words | other_words)
                    assert overlap < 0.75, f"{name}:{i + 1}: {text!r} is a near copy of the benchmark prompt {other!r}"
