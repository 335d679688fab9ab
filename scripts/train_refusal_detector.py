"""Retrain the shipped refusal detector from XSTest's human-labelled completions and measure it, leave one model out.

Reads ``../shared/data/safety/xstest-completions/xstest_v2_completions_{gpt4,llama2new,mistralinstruct}.csv``
(Röttger et al. 2024, arXiv:2308.01263; CC-BY-4.0), relative to the repository root unless ``--data_dir`` says
otherwise, and the project's hand-labelled answers of its own 135M policies (``--policy_sample``, shipped in the
package). For each of the three XSTest models it fits the head on the other two and the policy sample and reports,
on the held-out model, the detector's and the phrase baseline's accuracy, balanced accuracy, refusal precision and
refusal recall with 95% intervals (refusal = full or partial refusal; then full refusal vs full compliance only);
then the same figures on the policy sample, each policy's answers judged by a head fitted without that policy. Then
it fits the head on everything and writes ``alignment/modeling/refusal_model/refusal_head.safetensors`` and
``refusal_head.json`` (the provenance: data files and their digests, license, encoder version, settings, the
figures).

    python scripts/train_refusal_detector.py              # measure, print, write the shipped files
    python scripts/train_refusal_detector.py --sweep      # also compare the alternatives (about 2 minutes more)
    python scripts/train_refusal_detector.py --no_write   # measure and print only
    python scripts/train_refusal_detector.py --no_policy_sample --no_write   # XSTest alone, as before the sample
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
SOURCE = "paul-rottger/exaggerated-safety"
LICENSE = "CC-BY-4.0"
TARGETS = {"balanced_accuracy": 0.85, "recall": 0.85}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from alignment.evaluate.refusal_labels import POLICY_SAMPLE_PATH
    from alignment.evaluate.refusal_training import HeadSettings
    from alignment.modeling.refusal_classifier import SHIPPED_DIR

    defaults = HeadSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR, help="the shared data directory")
    parser.add_argument("--output_dir", type=Path, default=SHIPPED_DIR, help="where the head and its JSON go")
    parser.add_argument(
        "--policy_sample",
        type=Path,
        default=POLICY_SAMPLE_PATH,
        help="hand-labelled answers of the project's own policies (JSON lines)",
    )
    parser.add_argument("--no_policy_sample", action="store_true", help="fit and measure on XSTest alone")
    parser.add_argument("--features", choices=("sentences", "opening"), default=defaults.features)
    parser.add_argument("--n_sentences", type=int, default=defaults.n_sentences)
    parser.add_argument("--max_tokens", type=int, default=defaults.max_tokens, help="encoder window per text")
    parser.add_argument("--l2", type=float, default=defaults.l2)
    parser.add_argument("--class_weight", choices=("balanced", "none"), default=defaults.class_weight)
    parser.add_argument("--threshold", choices=("per_model", "pooled", "fixed"), default=defaults.threshold)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--sweep", action="store_true", help="also measure the alternatives and record them")
    parser.add_argument("--no_write", action="store_true", help="measure and print only")
    return parser.parse_args(argv)


def say(text: str) -> None:
    """This is a script: its output is the figures table (the library logs instead)."""
    print(text, flush=True)  # noqa: T201


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def summary_line(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    """The worst held-out model's balanced accuracy and recall for one alternative."""
    rows = [f["refusal_vs_compliance"] for f in figures.values()]
    return {
        "setting": name,
        "min_balanced_accuracy": round(min(r["balanced_accuracy"]["value"] for r in rows), 4),
        "min_recall": round(min(r["recall"]["value"] for r in rows), 4),
        "min_precision": round(min(r["precision"]["value"] for r in rows), 4),
        "meets_targets": all(
            r["balanced_accuracy"]["value"] >= TARGETS["balanced_accuracy"]
            and r["recall"]["value"] >= TARGETS["recall"]
            for r in rows
        ),
    }


def sweep(
    completions: dict[str, list[Any]], chosen_features: dict[str, Any], chosen: Any, batch_size: int
) -> list[dict[str, Any]]:
    """Leave-one-model-out figures for the alternatives: inputs, window, class weights, threshold rule, L2 (on the
    XSTest models only: the policy sample's leave-one-policy-out figures take seven fits more per setting)."""
    from alignment.evaluate.refusal_labels import XSTEST_MODELS
    from alignment.evaluate.refusal_training import HeadSettings, completion_features, leave_one_model_out

    inputs = [("sentences", 3, 64), ("sentences", 1, 64), ("opening", 1, 32), ("opening", 1, 64)]
    inputs += [("opening", 1, 128), ("opening", 1, 256)]
    lines = []
    for features, n_sentences, max_tokens in inputs:
        base = HeadSettings(features=features, n_sentences=n_sentences, max_tokens=max_tokens)
        same_input = (features, n_sentences, max_tokens) == (chosen.features, chosen.n_sentences, chosen.max_tokens)
        x = chosen_features if same_input else completion_features(completions, base, batch_size)
        described = f"{features} n_sentences={n_sentences}" if features == "sentences" else features
        for class_weight, threshold, l2 in itertools.product(
            ("balanced", "none"), ("per_model", "pooled", "fixed"), (0.01, 0.03, 0.1)
        ):
            settings = dataclasses.replace(base, class_weight=class_weight, threshold=threshold, l2=l2)
            name = f"{described} max_tokens={max_tokens} class_weight={class_weight} threshold={threshold} l2={l2}"
            line = summary_line(name, leave_one_model_out(x, completions, settings, XSTEST_MODELS))
            lines.append(line)
            say(
                f"  {name}: min balanced accuracy {line['min_balanced_accuracy']:.3f}, min recall "
                f"{line['min_recall']:.3f}, min precision {line['min_precision']:.3f}"
                + ("  <- meets targets" if line["meets_targets"] else "")
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from alignment.core.config import ConfigError
    from alignment.evaluate.refusal_labels import (
        POLICY_SAMPLE_SOURCE,
        XSTEST_LICENSE_FILE,
        XSTEST_MODELS,
        read_policy_sample,
        read_xstest_completions,
        xstest_completions_path,
    )
    from alignment.evaluate.refusal_training import (
        HeadSettings,
        completion_features,
        detector_figures,
        fit_head,
        format_figures_table,
        leave_one_group_out,
        leave_one_model_out,
        meets_targets,
    )
    from alignment.modeling.refusal import PhraseRefusalDetector, detect_refusals
    from alignment.modeling.refusal_classifier import (
        CARD_FILE,
        ENCODER_DISTRIBUTION,
        HEAD_FILE,
        encoder_dir,
        encoder_version,
    )

    missing = [xstest_completions_path(args.data_dir, m) for m in XSTEST_MODELS]
    missing = [p for p in missing if not p.is_file()]
    if missing:
        missing_text = ", ".join(map(str, missing))
        print(f"cannot train: XSTest completions not found ({missing_text}); give --data_dir", file=sys.stderr)  # noqa: T201
        return 2
    try:
        encoder_dir()
    except ConfigError as e:  # the encoder package is missing: one line naming the pip command
        print(f"cannot train: {e}", file=sys.stderr)  # noqa: T201
        return 2
    settings = HeadSettings(
        features=args.features,
        n_sentences=args.n_sentences,
        max_tokens=args.max_tokens,
        l2=args.l2,
        class_weight=args.class_weight,
        threshold=args.threshold,
    )
    completions = {m: read_xstest_completions(args.data_dir, m) for m in XSTEST_MODELS}
    if not args.no_policy_sample:
        completions[POLICY_SAMPLE_SOURCE] = read_policy_sample(args.policy_sample)
    start = time.perf_counter()
    features = completion_features(completions, settings, args.batch_size)
    n_total = sum(len(rows) for rows in completions.values())
    say(f"encoded {n_total} completions in {time.perf_counter() - start:.1f} s")

    phrase = functools.partial(detect_refusals, PhraseRefusalDetector())  # texts -> verdicts
    xstest = {m: completions[m] for m in XSTEST_MODELS}
    figures = {
        "classifier": leave_one_model_out(features, completions, settings, XSTEST_MODELS),
        "phrase": detector_figures(phrase, xstest),
    }
    for subset, title in (
        ("refusal_vs_compliance", "refusal (full or partial) vs compliance"),
        ("full_refusal_vs_full_compliance", "full refusal vs full compliance (partial refusals left out)"),
    ):
        say(f"\nLeave one model out, held-out model; {title}; 95% intervals:\n")
        say(format_figures_table(figures, subset))
    met = meets_targets(figures["classifier"], **TARGETS)
    say(f"\ntargets (balanced accuracy and recall >= 0.85 on every held-out model) met: {met}")
    policy_figures = {}
    if POLICY_SAMPLE_SOURCE in completions:
        sample = completions[POLICY_SAMPLE_SOURCE]
        policy_figures = {
            "classifier": leave_one_group_out(features, completions, settings, POLICY_SAMPLE_SOURCE),
            **detector_figures(phrase, {"phrase": sample}),
        }
        say(f"\nThe project's policies' answers ({len(sample)}), each policy held out of the fit; 95% intervals:\n")
        say(format_figures_table({d: {POLICY_SAMPLE_SOURCE: f} for d, f in policy_figures.items()}))

    alternatives = []
    if args.sweep:
        say("\nAlternatives, leave one model out (worst held-out model):")
        alternatives = sweep(completions, features, settings, args.batch_size)

    if args.no_write:
        return 0 if met else 1
    head = fit_head(features, completions, settings)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    head_path = args.output_dir / HEAD_FILE
    head.save(head_path, {"license_of_training_data": LICENSE, "training_data": SOURCE})
    n_refusals = sum(c.is_refusal for rows in completions.values() for c in rows)
    card = {
        "detector": "classifier (alignment.modeling.refusal_classifier.ClassifierRefusalDetector)",
        "head_file": HEAD_FILE,
        "head_sha256": sha256(head_path),
        "threshold": head.threshold,
        "n_features": int(head.weight.numel()),
        "encoder": {
            "package": ENCODER_DISTRIBUTION,
            "version": encoder_version(),
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "pooling": "mean over the attention mask, L2-normalised",
        },
        "training": {
            **dataclasses.asdict(settings),
            "solver": "L2-penalised logistic regression, Newton's method (float64), on standardised features",
            "models": list(completions),
            "n_completions": n_total,
            "n_refusals": n_refusals,
            "label": "refusal = final_label 2_full_refusal or 3_partial_refusal",
        },
        "data": {
            "source": SOURCE,
            "citation": "Röttger et al. 2024, XSTest, arXiv:2308.01263",
            "license": LICENSE,
            "license_file": XSTEST_LICENSE_FILE,
            "files": {
                str(xstest_completions_path(Path(), m)): sha256(xstest_completions_path(args.data_dir, m))
                for m in XSTEST_MODELS
            },
        },
        "leave_one_model_out": {
            "protocol": "fit on two models' completions (threshold chosen on those two only), measure on the third",
            "intervals": "95% Wilson; balanced accuracy: mean of the two class recalls' Wilson bounds",
            "targets": TARGETS,
            "meets_targets": met,
            "figures": figures,
        },
        "alternatives": alternatives,
    }
    if policy_figures:
        sample_path = args.policy_sample.resolve()
        card["policy_sample"] = {
            "file": str(sample_path.relative_to(REPO_ROOT) if sample_path.is_relative_to(REPO_ROOT) else sample_path),
            "sha256": sha256(sample_path),
            "n": len(completions[POLICY_SAMPLE_SOURCE]),
            "n_refusals": sum(c.is_refusal for c in completions[POLICY_SAMPLE_SOURCE]),
            "what": "answers of the project's SmolLM2-135M SFT and PPO policies (the real-data recipe) to AdvBench, "
            "XSTest, Vicuna and Koala prompts, labelled refusal or not by hand (one annotator, XSTest's convention)",
            "weight": "the whole sample weighs as much as one XSTest model in the fit",
            "protocol": "each policy's answers judged by a head fitted on XSTest and the other policies' answers",
            "figures": policy_figures,
        }
    card_path = args.output_dir / CARD_FILE
    card_path.write_text(json.dumps(card, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    say(f"\nwrote {head_path} ({head_path.stat().st_size} bytes) and {card_path}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
