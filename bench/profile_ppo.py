"""Profile our PPO loop with torch.profiler: where the time of a (quick) run goes, by operator and by phase.

    python bench/profile_ppo.py --quick              # 2 updates, 8-token responses (needs quick SFT/reward outputs)
    python bench/profile_ppo.py --updates 2 --response-length 48
    python bench/profile_ppo.py --quick --bf16      # under bf16 autocast

Runs ``bench_ppo.run_ours`` under ``torch.profiler.profile(activities=[CPU])`` with the bench's phase timers, and
writes ``bench/work/profile/ppo_ops.txt`` (operator table by self CPU time), ``ppo_phases.json`` and a Chrome trace
(``ppo_trace.json``, open in https://ui.perfetto.dev). On a machine shared with other jobs the absolute times are
inflated; the shares are more telling, but contention also inflates synchronisation-heavy work (many small ops).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import QUICK, WORK_DIR, ensure_pools  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--updates", type=int, default=None)
    parser.add_argument("--response-length", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as bench_ppo.py --bf16")
    parser.add_argument("--trace", action="store_true", help="also write a Chrome trace (large)")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    ensure_pools()
    import torch
    from torch.profiler import ProfilerActivity, profile

    import bench.bench_ppo as bench_ppo

    if args.updates or args.response_length:
        QUICK["ppo_updates"] = args.updates or QUICK["ppo_updates"]
        QUICK["response_length"] = args.response_length or QUICK["response_length"]
        args.quick = True
    sft_dir, reward_dir = bench_ppo.ensure_inputs("ours", args.quick, None, None)
    run_args = argparse.Namespace(
        quick=args.quick, bf16=args.bf16, tag="profile", no_peak=True, threads=None, output_dir=None, out=None
    )
    out = WORK_DIR / "profile"
    out.mkdir(parents=True, exist_ok=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False, with_stack=False) as prof:
        result = bench_ppo.run_ours(run_args, sft_dir, reward_dir)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
    (out / "ppo_ops.txt").write_text(table + "\n", encoding="utf-8")
    if args.trace:
        prof.export_chrome_trace(str(out / "ppo_trace.json"))
    phases = {k: round(v, 2) for k, v in sorted(result["phases"].items(), key=lambda kv: -kv[1])}
    summary = {
        "train_s": result["train_s"],
        "episodes_per_s": result["episodes_per_s"],
        "contended": result["contended"],
        "other_cpu_s": result["other_cpu_s"],
        "phases_s": phases,
        "phase_share": {k: round(v / result["train_s"], 3) for k, v in phases.items()},
        "threads": torch.get_num_threads(),
    }
    (out / "ppo_phases.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(table)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
