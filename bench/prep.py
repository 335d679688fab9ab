"""Build the benchmark's data pools from HH-RLHF harmless-base, by the reference measurement's rules.

    python bench/prep.py            # writes bench/work/{sft,rm_train,rm_eval,ppo_prompts,ppo_eval_prompts}.jsonl
                                    # + bench/work/quick/ (the --quick subsets) + bench/work/pools.json (manifest)

Method (the reference measurement's, re-implemented; bench/README.md, "Data"):

1. each transcript is split on ``"\\n\\nHuman: "`` / ``"\\n\\nAssistant: "`` into user/assistant messages; a row
   whose turns do not alternate user/assistant, has an empty turn, or does not end with the assistant is dropped;
2. lengths are measured with the model's chat template as trl tokenizes
   (``apply_chat_template(messages, tokenize=True, return_dict=True)``; SmolLM2's template adds its default
   system prompt);
3. the rows are shuffled with ``random.Random(42)`` and disjoint pools are filled in order (SFT, RM train,
   RM held-out, PPO prompts, PPO eval prompts), each taking the next eligible rows not used by an earlier pool:

   ====================  ===  ==========================================================================
   pool                  n    eligible when
   ====================  ===  ==========================================================================
   sft                   64   chosen conversation <= 256 tokens
   rm_train / rm_eval    128  chosen and rejected parse, share the prompt, differ in the final reply,
                         200  and are both <= 256 tokens
   ppo_prompts           64   prompt (chosen history + generation prompt) <= 256 - 48 = 208 tokens
   ppo_eval_prompts      8    same (only so trl's PPOTrainer has an eval set; never used)
   ====================  ===  ==========================================================================

Difference from the reference measurement, stated in pools.json: ``../shared/data`` holds the first 1,500 records
of the harmless-base *test* split, the reference read the whole split (2,312 records; its eligible counts
1,774 / 1,650 / 1,800 exceed 1,500). So the pools are drawn the same way from a smaller source: the same kind of
examples (the eligible shares agree within 1 point), not the same records, and token totals differ a little; compare
per-token rates.

Output formats (what ``alignment.data.load.load_records`` reads; the trl 1.12 script converts them):

- ``sft.jsonl``: ``{"messages": [...], "source_row": i}`` (openai_messages -> Demonstration)
- ``rm_*.jsonl``: ``{"prompt": [...messages], "chosen": str, "rejected": str, "source_row": i}`` (preference)
- ``ppo*_prompts.jsonl``: ``{"prompt": [...messages], "source_row": i}`` (prompts -> Prompt)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import HH_HARMLESS, MODEL_NAME, PPO_SETTINGS, QUICK, WORK_DIR  # noqa: E402

MAX_LENGTH = 256
SEED = 42
POOLS = (("sft", 64), ("rm_train", 128), ("rm_eval", 200), ("ppo_prompts", 64), ("ppo_eval_prompts", 8))
PEER_ELIGIBLE = {"sft": 1774, "rm": 1650, "ppo": 1800, "source_rows": 2312, "chosen_failed": 12, "rejected_failed": 5}
_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_transcript(text: str) -> list[dict[str, str]] | None:
    """Messages of one HH-RLHF transcript, or None when turns do not alternate, one is empty, or no reply ends it."""
    parts = _TURN.split(text)
    if parts[0] != "":
        return None
    messages = []
    for i, (speaker, content) in enumerate(zip(parts[1::2], parts[2::2])):
        role = "user" if speaker == "Human" else "assistant"
        if role != ("user" if i % 2 == 0 else "assistant") or not content.strip():
            return None
        messages.append({"role": role, "content": content})
    if not messages or messages[-1]["role"] != "assistant":
        return None
    return messages


def load_tokenizer():
    from transformers import AutoTokenizer

    from alignment.modeling.embedded import embedded_model_dir

    return AutoTokenizer.from_pretrained(str(embedded_model_dir(MODEL_NAME)))


def chat_length(tokenizer, messages: list[dict[str, str]], generation_prompt: bool = False) -> int:
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
    )
    return len(encoded["input_ids"])


def classify(rows: list[dict], tokenizer) -> tuple[list[dict], dict[str, int]]:
    """Per source row: parsed messages and eligibility for each pool kind."""
    max_prompt = MAX_LENGTH - PPO_SETTINGS["response_length"]
    info, counts = [], {"source_rows": len(rows), "chosen_failed": 0, "rejected_failed": 0, "sft": 0, "rm": 0, "ppo": 0}
    for index, row in enumerate(rows):
        chosen, rejected = parse_transcript(row["chosen"]), parse_transcript(row["rejected"])
        counts["chosen_failed"] += chosen is None
        counts["rejected_failed"] += rejected is None
        item = {"row": index, "chosen": chosen, "rejected": rejected, "sft": False, "rm": False, "ppo": False}
        if chosen is not None:
            chosen_len = chat_length(tokenizer, chosen)
            item["sft"] = chosen_len <= MAX_LENGTH
            item["ppo"] = chat_length(tokenizer, chosen[:-1], generation_prompt=True) <= max_prompt
            if (
                rejected is not None
                and chosen[:-1] == rejected[:-1]
                and chosen[-1]["content"] != rejected[-1]["content"]
            ):
                item["rm"] = chosen_len <= MAX_LENGTH and chat_length(tokenizer, rejected) <= MAX_LENGTH
        for kind in ("sft", "rm", "ppo"):
            counts[kind] += item[kind]
        info.append(item)
    return info, counts


def record_for(pool: str, item: dict) -> dict:
    chosen, rejected = item["chosen"], item["rejected"]
    if pool == "sft":
        return {"messages": chosen, "source_row": item["row"]}
    if pool.startswith("rm_"):
        return {
            "prompt": chosen[:-1],
            "chosen": chosen[-1]["content"],
            "rejected": rejected[-1]["content"],
            "source_row": item["row"],
        }
    return {"prompt": chosen[:-1], "source_row": item["row"]}


def take_pools(info: list[dict], seed: int) -> dict[str, list[dict]]:
    order = list(range(len(info)))
    random.Random(seed).shuffle(order)
    used: set[int] = set()
    pools: dict[str, list[dict]] = {}
    for pool, size in POOLS:
        kind = "rm" if pool.startswith("rm_") else "ppo" if pool.startswith("ppo") else "sft"
        chosen_rows = []
        for i in order:
            if len(chosen_rows) == size:
                break
            if i not in used and info[i][kind]:
                chosen_rows.append(i)
                used.add(i)
        if len(chosen_rows) < size:
            raise SystemExit(f"pool {pool}: only {len(chosen_rows)} eligible rows left, need {size}")
        pools[pool] = [record_for(pool, info[i]) for i in chosen_rows]
    return pools


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def token_totals(pools: dict[str, list[dict]], tokenizer) -> dict[str, int]:
    """Template token totals (what a trainer sees before padding): a check against the reference's 8,982 / 33,465."""
    sft = sum(chat_length(tokenizer, r["messages"]) for r in pools["sft"])
    rm = sum(
        chat_length(tokenizer, [*r["prompt"], {"role": "assistant", "content": r[k]}]) - 1  # minus the trailing "\n"
        for r in pools["rm_train"]
        for k in ("chosen", "rejected")
    )
    ppo = sum(chat_length(tokenizer, r["prompt"], generation_prompt=True) for r in pools["ppo_prompts"])
    return {"sft_tokens": sft, "rm_train_tokens": rm, "ppo_prompt_tokens": ppo}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(HH_HARMLESS), help="HH-RLHF harmless-base .jsonl.gz")
    parser.add_argument("--out", default=str(WORK_DIR), help="output folder (git-ignored bench/work)")
    args = parser.parse_args(argv)
    source = Path(args.source)
    if not source.is_file():
        raise SystemExit(f"{source} not found: the benchmark reads HH-RLHF harmless-base from ../shared/data")
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    tokenizer = load_tokenizer()
    info, counts = classify(rows, tokenizer)
    pools = take_pools(info, SEED)
    out = Path(args.out)
    quick_sizes = {
        "sft": QUICK["sft_examples"],
        "rm_train": QUICK["rm_pairs"],
        "rm_eval": QUICK["rm_eval_pairs"],
        "ppo_prompts": QUICK["ppo_prompts"],
        "ppo_eval_prompts": 8,
    }
    sha = {name: write_jsonl(out / f"{name}.jsonl", records) for name, records in pools.items()}
    for name, records in pools.items():
        write_jsonl(out / "quick" / f"{name}.jsonl", records[: quick_sizes[name]])
    manifest = {
        "source": str(source),
        "seed": SEED,
        "eligible": counts,
        "peer_eligible": PEER_ELIGIBLE,
        "eligible_share": {k: counts[k] / counts["source_rows"] for k in ("sft", "rm", "ppo")},
        "peer_eligible_share": {k: PEER_ELIGIBLE[k] / PEER_ELIGIBLE["source_rows"] for k in ("sft", "rm", "ppo")},
        "sizes": {name: len(records) for name, records in pools.items()},
        "sha256": sha,
        "token_totals": token_totals(pools, tokenizer),
        "note": (
            "the peer drew from the full harmless-base test split (2,312 rows); ../shared/data has the first 1,500, "
            "so these pools are drawn the same way but are not the peer's records"
        ),
    }
    (out / "pools.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: manifest[k] for k in ("eligible", "sizes", "token_totals")}))
    return manifest


if __name__ == "__main__":
    main()
