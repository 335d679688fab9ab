"""Run the whole benchmark: prep, then each stage ours and trl 1.12 interleaved, one process per run.

    python bench/run_all.py --repeats 3             # the measurement (about 1.5 h per repeat on a 2-core CPU)
    python bench/run_all.py --quick --repeats 1     # smoke test of every path (tiny sizes; about 30 min)
    python bench/run_all.py --stages ppo --ours-only
    python bench/run_all.py --merge bench/work/a.json bench/work/b.json   # one summary over several invocations
    python bench/run_all.py --merge a.json@peer b.json@ours c.json@peer:reward  # only those sides / stages of each

For each stage (sft, reward, ppo) and each repeat: ``bench_<stage>.py`` (ours), then ``bench_<stage>.py --peer``
(trl 1.12 in ``bench/.venv-trl112``, built on first use), each in its own subprocess so peak RSS is per run. PPO
starts from the first repeat's SFT and reward outputs of the same side. Writes ``bench/results.json`` (``--quick``:
``bench/work/results-quick.json``, so smoke-test numbers never land in the repository) and prints a Markdown table
of our/peer ratios:

- throughput ratio: median ours / median peer of the headline figure (SFT non-pad tokens/s, reward pairs/s,
  PPO episodes/s), over uncontended runs when both sides have one, else over all runs (then marked contended);
- CPU-normalised ratio: the same per own CPU-second (items / CPU time of the run's process), a rough proxy that is
  less sensitive to other load (not a substitute for a quiet machine: spinning threads inflate CPU time);
- peak-memory ratio: median ours / median peer ``ru_maxrss``;
- machine-peak share: model FLOPs / train time / measured GEMM peak of the run's dtype (bf16 under --bf16, for
  both sides: the machine's peak there), per side (see common.py for the model); the fp32-peak share is also kept.

The benchmark's targets (bench/README.md, "Targets and reference figures"): PPO >= 2.5x episodes/s in fp32 and
>= 3x in bf16, at <= 0.35x peak memory; SFT and reward >= 2x throughput in both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DIR, REPO_ROOT, WORK_DIR, ensure_peer_venv, machine_info, parse_results  # noqa: E402

HEADLINE = {"sft": "tokens_per_s", "reward": "pairs_per_s", "ppo": "episodes_per_s"}
ITEMS = {"sft": "non_pad_tokens", "reward": "pairs", "ppo": "episodes"}
UNITS = {"sft": "non-pad tok/s", "reward": "pairs/s", "ppo": "episodes/s"}
# stage -> (throughput ratio in fp32, in bf16, peak-memory ratio or None)
TARGETS = {"sft": (2.0, 2.0, None), "reward": (2.0, 2.0, None), "ppo": (2.5, 3.0, 0.35)}


def run_one(stage: str, side: str, tag: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(BENCH_DIR / f"bench_{stage}.py"), "--tag", tag]
    command += ["--peer"] * (side == "peer") + ["--quick"] * args.quick + ["--bf16"] * args.bf16
    command += ["--no-peak"] * args.no_peak + (["--threads", str(args.threads)] if args.threads else []) + extra
    log_path = WORK_DIR / "logs" / f"{side}-{stage}-{tag}{'-quick' if args.quick else ''}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {side} {stage} {tag}: {' '.join(command[1:])}\n")
    t0 = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.run(command, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=log, text=True)
    wall = time.perf_counter() - t0
    results = parse_results(proc.stdout)
    if proc.returncode != 0 or not results:
        sys.stderr.write(f"  FAILED (exit {proc.returncode}); log: {log_path}\n")
        return {"stage": stage, "side": side, "tag": tag, "failed": True, "exit": proc.returncode, "log": str(log_path)}
    result = results[-1]
    result["stage_wall_s"] = wall
    result["log"] = str(log_path)
    headline = result.get(HEADLINE[stage])
    sys.stderr.write(
        f"  {HEADLINE[stage]}={headline:.4g} train_s={result['train_s']:.1f} peak_rss={result['peak_rss_mib']:.0f} MiB "
        f"other_cpu_s={result.get('other_cpu_s') or 0:.1f} contended={result.get('contended')}\n"
    )
    return result


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for stage in HEADLINE:
        ok = {
            side: [r for r in runs if r["stage"] == stage and r["side"] == side and not r.get("failed")]
            for side in ("ours", "peer")
        }
        if not ok["ours"] and not ok["peer"]:
            continue
        quiet = {side: [r for r in rs if r.get("contended") is False] for side, rs in ok.items()}
        use_quiet = bool(quiet["ours"]) and bool(quiet["peer"])
        chosen = quiet if use_quiet else ok
        stage_summary: dict[str, Any] = {"uncontended_only": use_quiet, "runs": {s: len(rs) for s, rs in ok.items()}}
        for side, rs in chosen.items():
            stage_summary[side] = {
                "headline": _median([r[HEADLINE[stage]] for r in rs]),
                "per_cpu_s": _median([r[ITEMS[stage]] / r["train_window"]["own_cpu_s"] for r in rs]),
                "peak_rss_mib": _median([r["peak_rss_mib"] for r in rs]),
                "machine_peak_share": _median([r.get("machine_peak_share") for r in rs]),
                "machine_peak_share_vs_fp32": _median([r.get("machine_peak_share_vs_fp32") for r in rs]),
                "train_s": _median([r["train_s"] for r in rs]),
                "other_cpu_s": _median([r.get("other_cpu_s") for r in rs]),
                "n": len(rs),
            }
        ours, peer = stage_summary.get("ours", {}), stage_summary.get("peer", {})
        stage_summary["throughput_ratio"] = _ratio(ours.get("headline"), peer.get("headline"))
        stage_summary["per_cpu_ratio"] = _ratio(ours.get("per_cpu_s"), peer.get("per_cpu_s"))
        stage_summary["memory_ratio"] = _ratio(ours.get("peak_rss_mib"), peer.get("peak_rss_mib"))
        summary[stage] = stage_summary
    return summary


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _fmt_int(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def markdown(summary: dict[str, Any], quick: bool = False, bf16: bool = False) -> str:
    lines = [
        "| stage | ours | peer (trl 1.12) | throughput ours/peer | per-CPU-s ours/peer | peak RSS ours / peer (MiB) "
        "| memory ours/peer | machine-peak share ours / peer | target | runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stage, s in summary.items():
        ours, peer = s.get("ours", {}), s.get("peer", {})
        fp32_speed, bf16_speed, memory = TARGETS[stage]
        speed = bf16_speed if bf16 else fp32_speed
        target = f">= {speed}x" + (f", memory <= {memory}x" if memory else "")
        met = s["throughput_ratio"] is not None and s["throughput_ratio"] >= speed
        if memory is not None:
            met = met and s["memory_ratio"] is not None and s["memory_ratio"] <= memory
        flag = "met" if met else "not met"
        if quick or not s["uncontended_only"]:
            flag = f"not judged ({'quick' if quick else 'contended'}; would be {flag})"
        runs = f"{s['runs'].get('ours', 0)}+{s['runs'].get('peer', 0)}" + (
            "" if s["uncontended_only"] else " (contended)"
        )
        share = f"{_fmt(ours.get('machine_peak_share'), 2)} / {_fmt(peer.get('machine_peak_share'), 2)}"
        rss = f"{_fmt_int(ours.get('peak_rss_mib'))} / {_fmt_int(peer.get('peak_rss_mib'))}"
        lines.append(
            f"| {stage} | {_fmt(ours.get('headline'))} {UNITS[stage]} | {_fmt(peer.get('headline'))} {UNITS[stage]} "
            f"| {_fmt(s['throughput_ratio'])} | {_fmt(s['per_cpu_ratio'])} | {rss} | {_fmt(s['memory_ratio'])} "
            f"| {share} | {target}: {flag} | {runs} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved ours/peer pairs per stage")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--stages", default="sft,reward,ppo", help="comma-separated subset of sft,reward,ppo")
    parser.add_argument("--ours-only", action="store_true")
    parser.add_argument("--peer-only", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (slow on CPUs without bf16)")
    parser.add_argument("--no-peak", action="store_true", help="skip the per-run matmul-peak measurement")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="results file (default bench/results.json)")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="RESULTS",
        help="run nothing: summarise the successful runs of these results files together (e.g. a peer run and a "
        "later ours-only rerun) and write --out",
    )
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    sides = ["ours"] * (not args.peer_only) + ["peer"] * (not args.ours_only)
    out_path = (
        Path(args.out) if args.out else (WORK_DIR / "results-quick.json" if args.quick else BENCH_DIR / "results.json")
    )
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, str(BENCH_DIR / "prep.py")], cwd=str(REPO_ROOT), check=True, stdout=subprocess.DEVNULL
    )
    if "peer" in sides:
        ensure_peer_venv()
    runs: list[dict[str, Any]] = []
    inputs: dict[str, dict[str, str]] = {"ours": {}, "peer": {}}
    for stage in ("sft", "reward", "ppo"):
        if stage not in stages:
            continue  # without this run's SFT/reward outputs, bench_ppo.py uses (or makes) the latest ones
        for k in range(1, args.repeats + 1):
            for side in sides:
                extra: list[str] = []
                if stage == "ppo":
                    for upstream in ("sft", "reward"):
                        if upstream in inputs[side]:
                            extra += [f"--{upstream}-dir", inputs[side][upstream]]
                result = run_one(stage, side, f"r{k}", args, extra)
                runs.append(result)
                if stage != "ppo" and not result.get("failed") and stage not in inputs[side]:
                    inputs[side][stage] = result["output_dir"]
                _write(out_path, started, args, runs, time.perf_counter() - t0)
    summary = summarize(runs)
    _write(out_path, started, args, runs, time.perf_counter() - t0, summary)
    table = markdown(summary, args.quick, args.bf16)
    print(table)
    print(f"\nresults: {out_path}")
    contended = [f"{r['side']} {r['stage']} {r['tag']}" for r in runs if r.get("contended")]
    if contended:
        print(f"contended runs (other CPU > 2 % of own): {', '.join(contended)}")
    return {"summary": summary, "runs": runs}


def merge(args: argparse.Namespace) -> dict[str, Any]:
    """One summary over the runs of several results files; each run keeps its own machine and timing record.

    ``FILE@SIDE`` takes one side's runs of a file, ``FILE@SIDE:STAGE,STAGE`` only those stages (e.g. the peer
    runs of an interleaved invocation and our runs of a later one, after a change on our side).
    """
    runs, started = [], []
    for spec in args.merge:
        name, _, selector = spec.partition("@")
        side, _, stage_list = selector.partition(":")
        stages = set(stage_list.split(",")) if stage_list else None
        payload = json.loads(Path(name).read_text(encoding="utf-8"))
        started.append(payload["started"])
        for run in payload["runs"]:
            if run.get("failed") or (side and run["side"] != side) or (stages and run["stage"] not in stages):
                continue
            runs.append({**run, "from_results": spec, "invocation_started": payload["started"]})
    out_path = Path(args.out) if args.out else BENCH_DIR / "results.json"
    summary = summarize(runs)
    _write(out_path, " + ".join(started), args, runs, 0.0, summary)
    print(markdown(summary, args.quick, args.bf16))
    print(f"\nresults: {out_path} (merged from {', '.join(args.merge)})")
    return {"summary": summary, "runs": runs}


def _write(
    path: Path, started: str, args: argparse.Namespace, runs: list[dict], wall: float, summary: dict | None = None
) -> None:
    payload = {
        "started": started,
        "wall_s": wall,
        "args": vars(args),
        "machine": machine_info(),
        "pools": json.loads((WORK_DIR / "pools.json").read_text(encoding="utf-8"))
        if (WORK_DIR / "pools.json").is_file()
        else None,
        "summary": summary,
        "runs": runs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
