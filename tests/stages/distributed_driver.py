"""Test driver for multi-process runs: ``torchrun --nproc_per_node N distributed_driver.py <stage> '<json>'``.

Runs ``alignment.<stage>.train`` on flat config values (``build_config``), exactly as a stage script would, and adds
what the library deliberately does not write so tests can compare the processes with each other:

``--dump-dir DIR``: after each run every rank writes

- ``DIR/<run>/rank<k>.safetensors``: its trainable parameters (``core.sharding.full_trainable_state_dict``) once the loop
  has returned (LoRA adapters for SFT/reward; policy and value adapters plus value head for PPO);
- ``DIR/<run>/rank<k>.jsonl``: every row the rank handed to its step logger (only rank 0's logger writes
  ``log.jsonl``; the others are disabled, so their rows are recorded here),
- ``DIR/<run>/rank<k>.json``: how the rank held the model when the loop returned: ``sharded`` (FSDP parameters),
  ``local_fraction`` (the share of the parameter elements it stores; ``sharded_local_fraction``: among the sharded
  ones) and ``peak_rss_mib`` (the process's peak
  resident memory since the run started),

where ``<run>`` is the name of the run's ``output_dir``. The hook wraps the stage's loop function
(``train_loop`` for sft/reward, ``ppo_loop`` for ppo) from the outside; no library file is changed.

``<json>`` is an object of flat config values or a list of them; a list runs one after another in the same
process group, which saves one ``torchrun`` start-up (torch + transformers imports) per run.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
from pathlib import Path
from typing import Any

STAGES = ("sft", "reward", "dpo", "ppo")
# (module whose train() looks the loop up, loop name)
LOOP_FUNCTION = {
    "sft": ("alignment.sft", "train_loop"),
    "reward": ("alignment.reward", "train_loop"),
    "dpo": ("alignment.dpo", "train_loop"),
    "ppo": ("alignment.ppo.loop", "ppo_loop"),
}


def _install_dump_hook(stage: str, dump_dir: Path) -> None:
    """Wrap the stage's loop so each rank records its logged rows and, afterwards, its trainable parameters."""
    from safetensors.torch import save_file

    from alignment.core.peak_memory import peak_memory_mib
    from alignment.core.sharding import full_trainable_state_dict, is_sharded, local_fraction

    module_name, name = LOOP_FUNCTION[stage]
    loop_module = importlib.import_module(module_name)
    original = getattr(loop_module, name)

    @functools.wraps(original)
    def loop_with_dump(run: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        rank = run.accelerator.process_index
        out = dump_dir / Path(run.output_dir).name
        out.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        log = run.metrics.log

        def recording_log(step: int, metrics: dict[str, Any]) -> None:
            rows.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
            log(step, metrics)

        run.metrics.log = recording_log
        try:
            result = original(run, model, *args, **kwargs)
        finally:
            run.metrics.log = log
        # ``model`` is the object the stage passed in: DDP (``accelerator.prepare``) updates its parameters in place,
        # FSDP shards it in place (its parameters are gathered whole here, by every rank).
        save_file(full_trainable_state_dict(model), str(out / f"rank{rank}.safetensors"))
        (out / f"rank{rank}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        held = {
            "sharded": is_sharded(model),
            "local_fraction": local_fraction(model),
            "sharded_local_fraction": local_fraction(model, sharded_only=True),
            **peak_memory_mib(),
        }
        (out / f"rank{rank}.json").write_text(json.dumps(held), encoding="utf-8")
        return result

    setattr(loop_module, name, loop_with_dump)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("values", help="JSON object of flat config values, or a list of them")
    parser.add_argument("--dump-dir", type=Path, default=None, help="where every rank writes its parameters and rows")
    args = parser.parse_args(argv)

    from alignment.core.config_parsing import build_config
    from alignment.core.peak_memory import reset_peak_memory

    stage_module = importlib.import_module(f"alignment.{args.stage}")
    if args.dump_dir is not None:
        _install_dump_hook(args.stage, args.dump_dir)
    runs = json.loads(args.values)
    for values in runs if isinstance(runs, list) else [runs]:
        if args.dump_dir is not None:
            reset_peak_memory()  # each run's own peak, not an earlier run's in this process
        stage_module.train(build_config(stage_module.CONFIG_TYPES, values))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
