"""Shared benchmark helpers: machine description, measured matmul peak, peak memory, FLOP estimates, CPU contention.

Everything here is measurement plumbing for ``bench/bench_*.py`` and ``bench/run_all.py``; nothing in the library
imports it. Both sides (ours and the peer, trl 1.12) are measured by this code, with the definitions written down in
bench/README.md, "How we measure":

- throughput = items / wall time of the training call (our ``train_loop`` / ``ppo_loop``; trl's ``trainer.train()``),
  model loading, tokenization, evaluation and saving excluded;
- peak memory = ``ru_maxrss`` of the stage's own process (one subprocess per run), or
  ``torch.cuda.max_memory_allocated`` on a GPU;
- contention = CPU time the rest of the machine used during the training window (``other_cpu_s``): busy time from
  ``/proc/stat`` minus this process's own CPU time; a run is *uncontended* when ``other_cpu_s`` is at most 2 % of
  its own CPU time.

FLOP model (stated, not measured; attention score/value products and elementwise work are left out, which for
these <= 256-token sequences on a 576-wide model under-counts by a few percent):

- forward: ``2 * N * tokens``
- full training step (forward + backward, weight and activation gradients): ``6 * N * tokens``
- LoRA training step: ``4 * N * tokens`` (forward 2N + activation gradients 2N; the frozen base gets no weight
  gradients, and the adapters' own FLOPs are < 2 % of N at r=8)

``N`` is the parameter count of the network that runs (SmolLM2-135M: 134.5 M, the tied embedding counted once
because it is also the output projection), and ``tokens`` the non-pad tokens processed, so padding and recomputation
are *not* counted as useful work (the usual model-FLOPs-utilisation convention). "Machine-peak share" = these
model FLOPs / training wall time / measured fp32 (or bf16) GEMM peak.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work"
DATA_DIR = REPO_ROOT.parent / "shared" / "data"
HH_HARMLESS = DATA_DIR / "hh-rlhf" / "harmless-base-part1.jsonl.gz"
PEER_VENV = BENCH_DIR / ".venv-trl112"
MODEL_NAME = "smollm2-135m-instruct"
RESULT_PREFIX = "BENCH_RESULT "  # the one stdout line each bench process prints, followed by JSON
CONTENDED_SHARE = 0.02  # other CPU time > 2 % of our own CPU time -> contended (bench/README.md, "How we measure")

# The workload's settings (bench/README.md, "Workload and settings"): one place, used by ours and by the trl 1.12
# script.
SFT_SETTINGS = {"examples": 64, "batch_size": 8, "epochs": 1, "max_length": 256, "learning_rate": 2e-4}
RM_SETTINGS = {"pairs": 128, "eval_pairs": 200, "batch_size": 8, "epochs": 1, "max_length": 256, "learning_rate": 1e-4}
PPO_SETTINGS = {
    "prompts": 64,
    "batch_size": 8,
    "updates": 8,
    "ppo_epochs": 1,
    "mini_batches": 1,
    "response_length": 48,
    "temperature": 0.7,
    "kl_coef": 0.05,
    "missing_eos_penalty": 1.0,
    "learning_rate": 3e-6,
}
LORA_SETTINGS = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
QUICK = {  # --quick: a smoke test of every code path in a few minutes, not a measurement
    "sft_examples": 8,
    "rm_pairs": 8,
    "rm_eval_pairs": 8,
    "ppo_prompts": 16,
    "ppo_updates": 2,
    "response_length": 8,
}


# ------------------------------------------------------------------------------------------ machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def total_ram_mib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    return None


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, accelerator and library versions of *this* interpreter."""
    import torch

    cpu_flags = next((ln for ln in _read("/proc/cpuinfo").splitlines() if ln.startswith("flags")), "")
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma") if f" {f}" in cpu_flags],
        "hypervisor": "hypervisor" in cpu_flags,
        "ram_mib": total_ram_mib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        info[name] = package_version(name)
    return info


# ------------------------------------------------------------------------------------------ matmul peak


def matmul_peak(
    dtype: str = "fp32", size: int = 2048, repeats: int = 10, warmup: int = 3, max_seconds: float = 0.5
) -> dict[str, Any]:
    """Measured GEMM throughput: ``size``-square matmuls after ``warmup`` runs; median (and best) of ``repeats``.

    FLOPs per matmul = 2 * size^3. On a CPU without native bf16 GEMM (no AVX512-BF16/AMX) torch emulates bf16 at
    well under 1/10 of fp32 speed; a 2048^2 bf16 matmul then takes tens of seconds, so for bf16 the size is halved
    (down to 256) until one matmul takes at most ``max_seconds``. The slow figure is the machine's real bf16
    capability. fp32 always uses ``size``.
    """
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def operands(n: int) -> tuple[Any, Any, Any]:
        generator = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(n, n, generator=generator).to(device=device, dtype=torch_dtype)
        b = torch.randn(n, n, generator=generator).to(device=device, dtype=torch_dtype)
        return a, b, torch.empty(n, n, device=device, dtype=torch_dtype)

    def one(a: Any, b: Any, out: Any) -> float:
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        return time.perf_counter() - t0

    if dtype != "fp32":  # fp32 keeps the fixed size, so the figure does not depend on how loaded the machine is
        probe = operands(256)
        one(*probe)
        probe_s = one(*probe)
        while size > 256 and probe_s * (size / 256) ** 3 > max_seconds:
            size //= 2
    a, b, out = operands(size)
    for _ in range(warmup):
        one(a, b, out)
    times = [one(a, b, out) for _ in range(repeats)]
    flops = 2.0 * size**3
    median = statistics.median(times)
    return {
        "dtype": dtype,
        "size": size,
        "repeats": repeats,
        "median_s": median,
        "flops_per_s": flops / median,
        "best_flops_per_s": flops / min(times),
        "threads": torch.get_num_threads(),
        "device": device,
    }


def measure_peaks(repeats: int = 10) -> dict[str, Any]:
    """fp32 and bf16 GEMM peaks (bf16 with fewer repeats: it is slow on CPUs without native bf16)."""
    return {"fp32": matmul_peak("fp32", repeats=repeats), "bf16": matmul_peak("bf16", repeats=max(3, repeats // 3))}


# ------------------------------------------------------------------------------------------ memory


def peak_rss_mib() -> float:
    """``ru_maxrss`` of this process in MiB (Linux reports KiB): includes model loading and file-backed pages."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory() -> dict[str, float | None]:
    import torch

    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mib": peak_rss_mib(), "peak_gpu_allocated_mib": gpu}


# ------------------------------------------------------------------------------------------ FLOPs


def forward_flops(n_params: float, tokens: float) -> float:
    """Forward pass: 2 FLOPs (multiply + add) per parameter per token."""
    return 2.0 * n_params * tokens


def train_flops(n_params: float, tokens: float, lora: bool) -> float:
    """Forward + backward: 6 N tokens for full training; 4 N tokens with LoRA (no weight grads for the frozen base)."""
    return (4.0 if lora else 6.0) * n_params * tokens


def count_parameters(model: Any) -> int:
    """Parameters of a torch module, shared (tied) tensors counted once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# ------------------------------------------------------------------------------------------ CPU load


def _proc_stat_busy_s() -> float | None:
    """Machine-wide busy CPU seconds so far (all CPUs): user+nice+system+irq+softirq+steal from ``/proc/stat``."""
    line = _read("/proc/stat").splitlines()[:1]
    if not line or not line[0].startswith("cpu "):
        return None
    fields = [int(v) for v in line[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _proc_stat_steal_s() -> float:
    line = _read("/proc/stat").splitlines()[:1]
    fields = [int(v) for v in line[0].split()[1:]] if line else []
    return (fields[7] if len(fields) > 7 else 0) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


@dataclass
class CpuWindow:
    """What one timed window cost: wall time, own CPU time, the rest of the machine's CPU time (``other_cpu_s``)."""

    wall_s: float = 0.0
    own_cpu_s: float = 0.0
    other_cpu_s: float | None = None
    steal_s: float | None = None
    contended: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out.update(self.extra)
        return out


@contextlib.contextmanager
def cpu_window() -> Iterator[CpuWindow]:
    """Time a block and measure the other CPU load during it (``other_cpu_s``; bench/README.md, "How we measure").

    ``other_cpu_s`` = machine busy CPU time (``/proc/stat``) - this process's CPU time (``getrusage``, self +
    waited-for children), clamped at 0 (the two clocks tick differently, so small negatives are noise).
    """
    window = CpuWindow()
    busy0, own0, steal0, t0 = _proc_stat_busy_s(), _own_cpu_s(), _proc_stat_steal_s(), time.perf_counter()
    try:
        yield window
    finally:
        window.wall_s = time.perf_counter() - t0
        window.own_cpu_s = _own_cpu_s() - own0
        busy1 = _proc_stat_busy_s()
        if busy0 is not None and busy1 is not None:
            window.other_cpu_s = max(0.0, (busy1 - busy0) - window.own_cpu_s)
            window.steal_s = _proc_stat_steal_s() - steal0
            window.contended = window.other_cpu_s > CONTENDED_SHARE * max(window.own_cpu_s, 1e-9)


# ------------------------------------------------------------------------------------------ results


def machine_peak_share(model_flops: float, seconds: float, peak_flops_per_s: float | None) -> float | None:
    if not peak_flops_per_s or not seconds:
        return None
    return model_flops / seconds / peak_flops_per_s


def emit_result(result: dict[str, Any], path: str | Path | None = None) -> None:
    """Print the one result line (``BENCH_RESULT {json}``) that run_all.py collects, and optionally save it."""
    text = json.dumps(result, sort_keys=True, default=_json_default)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(RESULT_PREFIX + text + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def parse_results(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line[len(RESULT_PREFIX) :]) for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]


def steady_state(step_seconds: list[float], items_per_step: list[float]) -> float | None:
    """Items per second excluding the first step (warm-up): the ``steady_state_*`` figures."""
    if len(step_seconds) < 2:
        return None
    return sum(items_per_step[1:]) / sum(step_seconds[1:])


def ours_run_settings(args: Any, stage: str) -> tuple[Path, dict[str, Any]]:
    """(emptied output dir, the config keys every stage of ours shares): model, fp32, the LoRA settings, seed 42."""
    import shutil

    output_dir = Path(args.output_dir) if args.output_dir else WORK_DIR / "runs" / "ours" / f"{stage}-{args.tag}"
    shutil.rmtree(output_dir, ignore_errors=True)
    return output_dir, {
        "model_name_or_path": MODEL_NAME,
        "dtype": "fp32",
        "use_lora": True,
        "lora_r": LORA_SETTINGS["r"],
        "lora_alpha": LORA_SETTINGS["alpha"],
        "lora_dropout": LORA_SETTINGS["dropout"],
        "lora_target_modules": [LORA_SETTINGS["target_modules"]],
        "output_dir": str(output_dir),
        "seed": 42,
    }


def pool_path(name: str, quick: bool = False) -> Path:
    """``bench/work/<name>.jsonl`` (or the ``--quick`` subset, ``bench/work/quick/<name>.jsonl``)."""
    return (WORK_DIR / "quick" if quick else WORK_DIR) / f"{name}.jsonl"


def ensure_pools(quick: bool = False) -> None:
    """Build the data pools with prep.py when they are missing (prep is deterministic and takes seconds)."""
    names = ("sft", "rm_train", "rm_eval", "ppo_prompts", "ppo_eval_prompts")
    if all(pool_path(n, quick).is_file() for n in names):
        return
    import subprocess

    subprocess.run([sys.executable, str(BENCH_DIR / "prep.py")], check=True, cwd=str(REPO_ROOT))


def add_common_args(parser: Any) -> None:
    parser.add_argument("--peer", action="store_true", help="run trl 1.12's trainer (in bench/.venv-trl112) instead")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (ours) / bf16=True (peer); default fp32")
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test sizes (not a measurement)")
    parser.add_argument("--tag", default="r1", help="run label; outputs go to bench/work/runs/<side>/<stage>-<tag>")
    parser.add_argument("--no-peak", action="store_true", help="skip the matmul-peak measurement")
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")


# ------------------------------------------------------------------------------------------ timers


class PhaseTimer:
    """Seconds, calls and tokens per named phase, collected by wrapping functions (``wrap``) for the run's life.

    The wrapped callables are restored by ``restore()``; the bench scripts wrap library functions from outside
    (monkeypatching), so the library itself carries no timing code beyond its step log.
    """

    def __init__(self, memory: bool = False) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.tokens: dict[str, float] = {}
        self._patches: list[tuple[Any, str, Any]] = []
        self.memory = RssAttribution() if memory else None

    def add(self, phase: str, seconds: float, tokens: float = 0.0) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
        self.calls[phase] = self.calls.get(phase, 0) + 1
        self.tokens[phase] = self.tokens.get(phase, 0.0) + tokens

    def wrap(self, owner: Any, name: str, phase_fn: Any, tokens_fn: Any = None) -> None:
        """Replace ``owner.name`` by a timed version; ``phase_fn(args, kwargs)`` names the phase (None: not timed)."""
        original = getattr(owner, name)
        timer = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            phase = phase_fn(args, kwargs)
            if phase is None:
                return original(*args, **kwargs)
            t0 = time.perf_counter()
            with timer.memory.phase(phase) if timer.memory is not None else contextlib.nullcontext():
                result = original(*args, **kwargs)
            tokens = tokens_fn(phase, args, kwargs, result) if tokens_fn else 0.0
            timer.add(phase, time.perf_counter() - t0, float(tokens or 0.0))
            return result

        timed.__wrapped__ = original  # type: ignore[attr-defined]
        self._patches.append((owner, name, original))
        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches.clear()
        if self.memory is not None:
            self.memory.stop()

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": dict(self.seconds), "calls": dict(self.calls), "tokens": dict(self.tokens)}


class RssAttribution:
    """Which phase raised the process's resident-memory high-water mark, and by how much.

    A thread samples resident memory (``/proc/self/statm``) every ``interval_s``; each rise of the running maximum
    is charged to the innermost phase active at that moment (``"outside"`` when none). Charging rises, not levels,
    matters on the CPU: glibc keeps freed blocks for reuse (``alignment.core.cpu_memory``), so resident memory stays
    at its peak after the phase that set it, and every later phase would otherwise look as large. Samples are taken
    while torch kernels run (they release the GIL); a rise shorter than the interval can be missed.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stack: list[str] = []
        self.start_mib = self._rss_mib()
        self.peak_mib = self.start_mib
        self.raised_mib: dict[str, float] = {}
        self.peak_phase: dict[str, float] = {}  # highest resident memory seen while each phase was active
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)
        self._thread.start()

    def _rss_mib(self) -> float:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * self._page / 2**20

    def _sample(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            rss, stack = self._rss_mib(), list(self._stack)
            for name in stack:
                self.peak_phase[name] = max(self.peak_phase.get(name, 0.0), rss)
            if rss > self.peak_mib:
                owner = stack[-1] if stack else "outside"
                self.raised_mib[owner] = self.raised_mib.get(owner, 0.0) + rss - self.peak_mib
                self.peak_mib = rss

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def as_dict(self) -> dict[str, Any]:
        return {
            "start_mib": round(self.start_mib, 1),
            "peak_mib": round(self.peak_mib, 1),
            "raised_mib": {k: round(v, 1) for k, v in sorted(self.raised_mib.items(), key=lambda kv: -kv[1])},
            "peak_while_mib": {k: round(v, 1) for k, v in sorted(self.peak_phase.items())},
        }


class StepClock:
    """Wall-clock time of each optimizer step, from torch's global optimizer step hooks.

    ``start()`` marks the beginning of the training window; the duration of step k is the time since the previous
    step ended (so it includes data collation, forward and backward of that step).
    ``optimizer_s`` sums the time spent inside ``optimizer.step()`` itself.
    """

    def __init__(self) -> None:
        self.t_start = 0.0
        self.ends: list[float] = []
        self.optimizer_s = 0.0
        self._t_pre = 0.0
        self._handles: list[Any] = []

    def start(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self.t_start = time.perf_counter()
        self._handles = [
            register_optimizer_step_pre_hook(self._pre),
            register_optimizer_step_post_hook(self._post),
        ]

    def _pre(self, *_: Any) -> None:
        self._t_pre = time.perf_counter()

    def _post(self, *_: Any) -> None:
        now = time.perf_counter()
        self.optimizer_s += now - self._t_pre
        self.ends.append(now)

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def step_seconds(self) -> list[float]:
        marks = [self.t_start, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:])]


# ------------------------------------------------------------------------------------------ the peer venv


def peer_requirements() -> list[str]:
    """trl 1.12.0 (needs transformers >= 4.56.2, no upper bound) with *our* torch/transformers/peft/accelerate/datasets.

    Pinning the shared libraries to the main environment's versions makes the trainer code the only difference
    between the two sides (same model code, attention kernels and BLAS). torch is installed as ``torch==<version>``
    so pip takes the local CPU wheel (never a CUDA build from an index).
    """
    torch_version = package_version("torch").split("+")[0]
    pins = [f"torch=={torch_version}", "trl==1.12.0"]
    for name in ("transformers", "peft", "accelerate", "datasets"):
        version = package_version(name)
        pins.append(f"{name}=={version}" if version != "not installed" else name)
    return pins


def peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def ensure_peer_venv(log: Any = None) -> Path:
    """Create ``bench/.venv-trl112`` (git-ignored) on first use: ``python -m venv`` + pip install of the pins."""
    import subprocess

    marker = PEER_VENV / ".bench-requirements"
    wanted = "\n".join(peer_requirements()) + "\n"
    if peer_python().is_file() and marker.is_file() and marker.read_text(encoding="utf-8") == wanted:
        return peer_python()
    out = log or sys.stderr
    out.write(f"building {PEER_VENV} with: {' '.join(peer_requirements())}\n")
    if not peer_python().is_file():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(peer_python()), "-m", "pip", "install", "-q", *peer_requirements()], check=True)
    marker.write_text(wanted, encoding="utf-8")
    return peer_python()


def run_peer_stage(stage: str, extra: list[str]) -> dict[str, Any]:
    """Run ``bench/peer_trl112.py --stage <stage>`` in the trl 1.12 venv; return (and re-emit) its result."""
    import subprocess

    from alignment.modeling.embedded import embedded_model_dir

    python = ensure_peer_venv()
    command = [str(python), str(BENCH_DIR / "peer_trl112.py"), "--stage", stage]
    command += ["--model-dir", str(embedded_model_dir(MODEL_NAME)), *extra]
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1", PYTHONPATH=str(REPO_ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, text=True)
    results = parse_results(proc.stdout)
    if proc.returncode != 0 or not results:
        sys.stdout.write(proc.stdout[-4000:])
        raise SystemExit(f"peer stage {stage} failed (exit {proc.returncode})")
    result = results[-1]
    result["launcher_wall_s"] = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------------------------------ result assembly


def finalize(
    result: dict[str, Any], window: CpuWindow, model_flops: float, bf16: bool, measure_peak: bool, t_process: float
) -> dict[str, Any]:
    """Add memory, CPU-load, FLOP and machine-peak fields shared by every stage's result (ours and peer)."""
    result.update(peak_memory())
    result["train_window"] = window.as_dict()
    result["contended"] = window.contended
    result["other_cpu_s"] = window.other_cpu_s
    result["model_flops"] = model_flops
    result["achieved_flops_per_s"] = model_flops / window.wall_s if window.wall_s else None
    if measure_peak:
        peaks = measure_peaks(repeats=10)
        result["matmul_peak"] = peaks
        reference = peaks["bf16" if bf16 else "fp32"]["flops_per_s"]
        result["machine_peak_share"] = machine_peak_share(model_flops, window.wall_s, reference)
        result["machine_peak_share_vs_fp32"] = machine_peak_share(
            model_flops, window.wall_s, peaks["fp32"]["flops_per_s"]
        )
    result["machine"] = machine_info()
    result["process_wall_s"] = time.perf_counter() - t_process
    return result


def base_parameters(model: Any) -> int:
    """Parameters of the network without LoRA adapters (tied tensors once): the ``N`` of the FLOP model."""
    seen: set[int] = set()
    total = 0
    for name, p in model.named_parameters():
        if "lora_" not in name and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def latest_file(side: str, stage: str, quick: bool) -> Path:
    """``bench/work/latest/<side>-<stage>[-quick].txt``: the newest stage output, which PPO starts from."""
    return WORK_DIR / "latest" / f"{side}-{stage}{'-quick' if quick else ''}.txt"


def record_latest(side: str, stage: str, quick: bool, output_dir: str) -> None:
    path = latest_file(side, stage, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(output_dir) + "\n", encoding="utf-8")
