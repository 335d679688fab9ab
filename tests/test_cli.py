"""The command line: `alignment --help`, per-command help, one-line errors with exit code 2, the stage scripts.

Also the layering: stage modules do no work at import, and the library never imports ``stages``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.cli import COMMANDS, STAGES, main
from alignment.core.config import ConfigError, TrainConfig
from alignment.core.config_parsing import parse_config
from tests.conftest import REPO_ROOT

TRAINING_STAGES = ("sft", "reward", "dpo", "ppo", "evaluate")  # the commands whose options come from CONFIG_TYPES


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``alignment <argv>`` run in-process."""
    try:
        code = main(argv)
    except SystemExit as e:  # --help exits from inside the stage's parser
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1",
            "ALIGNMENT_CACHE": str(tmp_path / "alignment_cache"),  # work at import would show up here
            "PYTHONWARNINGS": "ignore",
            "OMP_NUM_THREADS": "1",
        }
    )
    return env


def help_text(cls: type, name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


# ----------------------------------------------------------------------------------- alignment --help


def test_top_level_help_lists_every_command(capsys):
    for argv in (["--help"], ["-h"]):
        code, out, err = run_cli(argv, capsys)
        assert code == 0 and not err
        assert out.startswith("usage: alignment <command>")
        for command, description in STAGES.items():
            assert f"  {command}" in out and description in out


def test_console_script_help(tmp_path):
    script = shutil.which("alignment")
    assert script, "the `alignment` console script is not on PATH: pip install -e ."
    result = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=60, env=subprocess_env(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: alignment <command>") and all(c in result.stdout for c in STAGES)


@pytest.mark.parametrize("command", TRAINING_STAGES)
def test_command_help_lists_every_option_with_its_help(command, capsys):
    code, out, err = run_cli([command, "--help"], capsys)
    assert code == 0 and not err
    assert out.startswith(f"usage: alignment {command} [--config recipe.yaml]")
    lines = out.splitlines()
    for cls in importlib.import_module(f"alignment.{command}").CONFIG_TYPES:
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            i = next((i for i, line in enumerate(lines) if line.strip().startswith(f"--{f.name} (")), None)
            assert i is not None, f"alignment {command} --help does not list --{f.name}"
            assert lines[i + 1].strip() == f.metadata["help"], f"--{f.name}: help text missing"


def test_sft_help_shows_learning_rate_type_default_and_help(capsys):
    _, out, _ = run_cli(["sft", "--help"], capsys)
    assert "  --learning_rate (float, default 0.0002)\n" in out
    assert f"      {help_text(TrainConfig, 'learning_rate')}\n" in out


@pytest.mark.parametrize(("command", "expected"), [("pipeline", "--config"), ("data", "inspect SOURCE")])
def test_pipeline_and_data_help(command, expected, capsys):
    code, out, err = run_cli([command, "--help"], capsys)
    assert code == 0 and not err and expected in out


# ----------------------------------------------------------------------------------- errors


def test_unknown_command_exits_2_with_usage(capsys):
    code, out, err = run_cli(["trian", "--config", "configs/sft.yaml"], capsys)
    assert code == 2 and not out
    assert err.startswith("alignment: unknown command 'trian'") and "usage: alignment <command>" in err


@pytest.mark.parametrize("command", TRAINING_STAGES)
def test_unknown_key_exits_2_with_one_line_naming_the_nearest_key(command, capsys):
    code, out, err = run_cli([command, "--lerning_rate", "1e-5"], capsys)
    assert code == 2 and not out
    assert err == (
        f"alignment {command}: error: command line (--lerning_rate): unknown key 'lerning_rate'; "
        "did you mean 'learning_rate'?\n"
    )


def test_unknown_key_in_a_recipe_exits_2_naming_file_and_line(tmp_path, capsys):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("dataset_name: demo\nlora_rank: 8\n", encoding="utf-8")
    code, out, err = run_cli(["sft", "--config", str(recipe)], capsys)
    assert code == 2 and not out
    assert err == f"alignment sft: error: {recipe}:2: unknown key 'lora_rank'; did you mean 'lora_r'?\n"


def test_pipeline_unknown_key_exits_2_before_running_anything(tmp_path, capsys):
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'run'}\nsft:\n  dataset_name: demo\n  num_train_epoch: 1\n")
    code, out, err = run_cli(["pipeline", "--config", str(recipe)], capsys)
    assert code == 2 and not out
    assert err == (
        f"alignment pipeline: error: {recipe}:4: unknown key 'num_train_epoch'; did you mean 'num_train_epochs'?\n"
    )
    assert not (tmp_path / "run").exists()


# The flag forms a stage command accepts must work for `alignment pipeline` too (checked at the parser, so a
# fixed parser never starts a run from this test).
FLAG_FORMS = {
    "bare boolean": (["--load_in_4bit", "--lora_r", "8"], {"load_in_4bit": True, "lora_r": 8}),
    "--key=value": (["--lora_r=8"], {"lora_r": 8}),
}


def _parse(command: str, flags: list[str], tmp_path: Path):
    if command == "sft":
        return parse_config(importlib.import_module("alignment.sft").CONFIG_TYPES, flags).flat()
    from alignment.pipeline import load_pipeline, parse_arguments

    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text("sft: {dataset_name: demo}\n", encoding="utf-8")
    paths, overrides = parse_arguments(["--config", str(recipe), *flags])
    return load_pipeline(paths, overrides)[0]["sft"].flat()


@pytest.mark.parametrize(
    ("command", "form"),
    [
        *[pytest.param("sft", form, id=f"sft-{form}") for form in FLAG_FORMS],
        *[pytest.param("pipeline", form, id=f"pipeline-{form}") for form in FLAG_FORMS],
    ],
)
def test_commands_accept_the_same_flag_forms(command, form, tmp_path):
    flags, expected = FLAG_FORMS[form]
    flat = _parse(command, flags, tmp_path)
    assert {k: flat[k] for k in expected} == expected


def test_config_equals_form_is_accepted():
    cfg = parse_config(
        importlib.import_module("alignment.sft").CONFIG_TYPES, [f"--config={REPO_ROOT}/configs/sft.yaml"]
    )
    assert cfg.data.dataset_name == "demo"


@pytest.mark.parametrize(
    "command",
    [
        "sft",
        "pipeline",
    ],
)
def test_config_without_a_file_exits_2_with_one_line(command, capsys):
    code, out, err = run_cli([command, "--config"], capsys)
    assert code == 2 and not out
    assert err.count("\n") == 1 and "--config" in err, err


# ----------------------------------------------------------------------------------- scripts and imports


IMPORT_PROBE = """
import json, logging, os, sys, threading, time
files_before = sorted(os.listdir("."))
handlers_before = len(logging.getLogger().handlers)
threads_before = threading.active_count()
report = {"seconds": {}, "modules": {}}
for name in sys.argv[1:]:
    start = time.perf_counter()
    __import__(json.loads(os.environ["COMMAND_MODULES"])[name])
    report["seconds"][name] = round(time.perf_counter() - start, 2)
    report["modules"][name] = sorted(m for m in json.loads(os.environ["WATCHED"]) if m in sys.modules)
torch = sys.modules.get("torch")
report["cuda_initialized"] = bool(torch and torch.cuda.is_initialized())
report["new_files"] = sorted(set(os.listdir(".")) - set(files_before))
report["new_root_handlers"] = len(logging.getLogger().handlers) - handlers_before
report["new_threads"] = threading.active_count() - threads_before
report["cache_created"] = os.path.exists(os.environ["ALIGNMENT_CACHE"])
sys.stdout.write("PROBE " + json.dumps(report))
"""
# Importing any of these would mean a command loads models or data (or plots) at import time. (The data reader,
# alignment.data.load, is not among them: the data command imports it, and it reads nothing until called; the
# Hub loader it calls, datasets, is.)
WORK_MODULES = [
    "alignment.modeling.load",
    "alignment.modeling.tokenizer",
    "alignment.modeling.sources",
    "alignment.modeling.embedded",
    "datasets",
    "gguf",
    "matplotlib",
    "trl",
]
# Quantization / adapter libraries only training needs; `alignment sft --help` should not pay for them.
TRAINING_ONLY_MODULES = ["peft", "bitsandbytes"]
STAGE_SCRIPTS = sorted(p.stem for p in (REPO_ROOT / "stages").glob("*.py") if p.stem != "__init__")
# Lightest first: each stage's modules are read after its own import.
IMPORT_ORDER = sorted(STAGE_SCRIPTS, key=lambda s: (s not in ("data", "evaluate", "pipeline"), s))


@pytest.fixture(scope="module", autouse=True)
def started(tmp_path_factory):
    """The two slow subprocesses (each imports torch, transformers, peft), started when this module's first test
    runs so that they overlap with each other and with the in-process tests."""
    jobs = {}
    for name, argv in {
        "script": [sys.executable, str(REPO_ROOT / "stages" / "sft.py"), "--help"],
        "probe": [sys.executable, "-c", IMPORT_PROBE, *IMPORT_ORDER],
    }.items():
        cwd = tmp_path_factory.mktemp(name)
        env = subprocess_env(cwd) | {
            "WATCHED": json.dumps(WORK_MODULES + TRAINING_ONLY_MODULES),
            "COMMAND_MODULES": json.dumps({name: module for name, (module, _) in COMMANDS.items()}),
        }
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        jobs[name] = (subprocess.Popen(argv, cwd=cwd, env=env, **pipes), cwd)
    yield jobs
    for process, _ in jobs.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def subprocesses(started) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    results = {}
    for name, (process, cwd) in started.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), cwd)
    return results


def test_stage_script_runs_as_a_script(subprocesses):
    result, cwd = subprocesses["script"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: alignment sft") and "--learning_rate (float" in result.stdout
    assert not list(cwd.iterdir()), "the script wrote files for --help"


@pytest.fixture(scope="module")
def import_probe(subprocesses) -> dict:
    result, _ = subprocesses["probe"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PROBE "), f"importing stages printed: {result.stdout[:500]!r}"
    return json.loads(result.stdout.removeprefix("PROBE "))


def test_every_command_has_a_stage_script():
    assert set(STAGES) <= set(STAGE_SCRIPTS) and IMPORT_ORDER[:3] == ["data", "evaluate", "pipeline"]


def test_importing_stages_has_no_side_effects(import_probe):
    assert import_probe["new_files"] == [] and not import_probe["cache_created"]
    assert import_probe["new_root_handlers"] == 0, "a stage configured logging at import"
    assert import_probe["new_threads"] == 0 and not import_probe["cuda_initialized"]
    for command, modules in import_probe["modules"].items():
        loaded = sorted(set(modules) & set(WORK_MODULES))
        assert not loaded, (
            f"importing the {command} command imported {loaded}: loading belongs in main(), not at import"
        )


def test_importing_stages_is_fast(import_probe):
    # Generous for 2 shared cores; torch + transformers alone take a few seconds. Model or data loading at
    # import would take far longer (and is caught by the module check above).
    assert sum(import_probe["seconds"].values()) < 60, import_probe["seconds"]
    assert import_probe["seconds"]["data"] < 5, import_probe["seconds"]


def test_stage_help_does_not_import_peft_or_bitsandbytes(import_probe):
    assert import_probe["modules"]["sft"] == []


def test_library_never_imports_stages():
    """alignment/ and data_schemas/ must not depend on the scripts; alignment/cli.py is the dispatcher."""
    offenders = []
    for package in ("alignment", "data_schemas"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if path == REPO_ROOT / "alignment" / "cli.py":
                continue
            source = path.read_text(encoding="utf-8")
            for node in ast.walk(ast.parse(source, filename=str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names = [node.value] if node.value.startswith("stages.") else []  # import_module("stages.x")
                if any(n == "stages" or n.startswith("stages.") for n in names):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not offenders, f"library modules import the stage scripts: {offenders}"


def test_later_config_files_override_earlier_ones_and_flags_override_both(tmp_path):
    from alignment.pipeline import load_pipeline, parse_arguments

    stage = tmp_path / "sft.yaml"
    stage.write_text("dataset_name: demo\nlora_r: 4\nlearning_rate: 1.0e-4\n", encoding="utf-8")
    model = tmp_path / "model.yaml"
    model.write_text("model_name_or_path: some/model\nlora_r: 16\n", encoding="utf-8")
    argv = ["--config", str(stage), "--config", str(model), "--learning_rate", "2e-5"]
    flat = parse_config(importlib.import_module("alignment.sft").CONFIG_TYPES, argv).flat()
    assert (flat["model_name_or_path"], flat["lora_r"], flat["learning_rate"]) == ("some/model", 16, 2e-5)
    # In a pipeline the model recipe reaches every stage, over the recipe's stage sections.
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("sft: {dataset_name: demo, lora_r: 4}\nreward: {dataset_name: demo}\n", encoding="utf-8")
    configs, _, _ = load_pipeline(*parse_arguments(["--config", str(pipeline), "--config", str(model)]))
    assert {cfg.model.model_name_or_path for cfg in configs.values()} == {"some/model"}
    assert configs["sft"].lora.lora_r == 16
    # Mistakes in the layered file name that file and line.
    model.write_text("model_name_or_path: some/model\nlora_rr: 16\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{model.name}:2: unknown key 'lora_rr'; did you mean 'lora_r'"):
        load_pipeline(*parse_arguments(["--config", str(pipeline), "--config", str(model)]))
    model.write_text("sft: {lora_r: 16}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{model.name}:1: 'sft' sections belong in the first --config"):
        load_pipeline(*parse_arguments(["--config", str(pipeline), "--config", str(model)]))
