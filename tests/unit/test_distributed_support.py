"""check_distributed_support: FSDP is accepted for the supervised stages; ZeRO-3, FSDP for PPO, quantized bases under
sharding, FSDP on one process and DeepSpeed accumulation are refused with the reason."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

import alignment.ppo as ppo
from alignment import dpo, reward, sft
from alignment.core.config_parsing import build_config
from alignment.core.distributed import UnsupportedDistributedSetup, check_distributed_support, sharding_backend
from alignment.core.run import make_accelerator
from tests.conftest import REPO_ROOT


def launcher(
    distributed_type: DistributedType, zero_stage: int | None = None, num_processes: int = 2
) -> SimpleNamespace:
    """Stands in for an Accelerator built under `accelerate launch --config_file ...` (no GPU or DeepSpeed here)."""
    plugin = None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage)
    return SimpleNamespace(
        distributed_type=distributed_type, num_processes=num_processes, state=SimpleNamespace(deepspeed_plugin=plugin)
    )


ZERO2 = launcher(DistributedType.DEEPSPEED, zero_stage=2)
ZERO3 = launcher(DistributedType.DEEPSPEED, zero_stage=3)
FSDP = launcher(DistributedType.FSDP)
DDP = launcher(DistributedType.MULTI_GPU)
TORCHRUN_CPU = launcher(DistributedType.MULTI_CPU)


def config(module=sft, **values):
    return build_config(module.CONFIG_TYPES, values)


@pytest.mark.parametrize("module", [sft, reward, ppo])
@pytest.mark.parametrize("quant", [{}, {"load_in_8bit": True}, {"load_in_4bit": True}])
def test_ddp_and_zero2_accept_lora_8bit_and_4bit(module, quant):
    accelerators = [DDP, launcher(DistributedType.NO), launcher(DistributedType.MULTI_CPU)]
    for accelerator in accelerators + ([ZERO2] if module is not ppo else []):
        check_distributed_support(config(module, **quant), accelerator)


def test_ppo_under_deepspeed_is_refused_not_run_as_ddp_under_another_name():
    with pytest.raises(UnsupportedDistributedSetup, match="PPO does not run under DeepSpeed") as error:
        check_distributed_support(config(ppo), ZERO2)
    assert "fsdp: true" in str(error.value)


def test_the_accelerator_start_run_builds_on_this_machine_is_accepted():
    accelerator = make_accelerator(cpu=True)
    assert sharding_backend(accelerator) is None
    check_distributed_support(config(load_in_4bit=True, gradient_accumulation_steps=4), accelerator)


@pytest.mark.parametrize(
    ("accelerator", "backend"), [(ZERO3, "DeepSpeed ZeRO-3"), (FSDP, "FSDP")], ids=["zero3", "fsdp"]
)
@pytest.mark.parametrize("key", ["load_in_8bit", "load_in_4bit"])
def test_quantized_base_under_parameter_sharding_names_the_key_the_backend_and_the_way_out(accelerator, backend, key):
    with pytest.raises(UnsupportedDistributedSetup) as error:
        check_distributed_support(config(**{key: True}), accelerator)
    message = str(error.value)
    assert f"{key}: true" in message and backend in message
    assert "multi_gpu_ddp.yaml" in message and "deepspeed_zero2.yaml" in message
    assert ("int8" if key == "load_in_8bit" else "bnb_4bit_quant_storage") in message


@pytest.mark.parametrize("module", [sft, reward, ppo])
def test_zero3_is_refused_because_rank_zero_saves_its_own_partition(module):
    with pytest.raises(UnsupportedDistributedSetup, match="DeepSpeed ZeRO-3 is not supported by the stages") as error:
        check_distributed_support(config(module), ZERO3)
    assert "fsdp: true" in str(error.value)  # the way out


@pytest.mark.parametrize("module", [sft, reward, dpo])
def test_fsdp_is_accepted_for_the_supervised_stages_from_the_recipe_or_the_launcher(module):
    check_distributed_support(config(module, fsdp=True), TORCHRUN_CPU)
    check_distributed_support(config(module, fsdp=True, use_lora=False), TORCHRUN_CPU)
    check_distributed_support(config(module), FSDP)
    assert sharding_backend(TORCHRUN_CPU, config(module, fsdp=True)) == "FSDP"
    assert sharding_backend(TORCHRUN_CPU, config(module)) is None


def test_fsdp_for_ppo_is_accepted_unquantized():
    check_distributed_support(config(ppo, fsdp=True), TORCHRUN_CPU)
    check_distributed_support(config(ppo), FSDP)
    with pytest.raises(UnsupportedDistributedSetup, match="load_in_4bit: true cannot be trained under FSDP"):
        check_distributed_support(config(ppo, fsdp=True, load_in_4bit=True), TORCHRUN_CPU)


def test_fsdp_on_one_process_is_refused_naming_the_launch_command():
    with pytest.raises(UnsupportedDistributedSetup, match="torchrun --nproc_per_node N") as error:
        check_distributed_support(config(fsdp=True), make_accelerator(cpu=True))
    assert "fsdp: false" in str(error.value)


@pytest.mark.parametrize("key", ["load_in_8bit", "load_in_4bit"])
def test_quantized_base_with_fsdp_from_the_recipe_is_refused(key):
    with pytest.raises(UnsupportedDistributedSetup, match=f"{key}: true cannot be trained under FSDP"):
        check_distributed_support(config(fsdp=True, **{key: True}), TORCHRUN_CPU)


@pytest.mark.parametrize("module", [sft, reward])
def test_deepspeed_with_hand_accumulation_is_refused_for_the_supervised_loop(module):
    with pytest.raises(
        UnsupportedDistributedSetup, match="gradient_accumulation_steps: 4 cannot be used under DeepSpeed"
    ):
        check_distributed_support(config(module, gradient_accumulation_steps=4), ZERO2)
    check_distributed_support(config(module, gradient_accumulation_steps=4), DDP)  # DDP's no_sync path is fine


LAUNCHER_CONFIGS = sorted((REPO_ROOT / "configs" / "accelerate").glob("*.yaml"))
REFUSED_LAUNCHERS = {"deepspeed_zero3"}


def test_all_six_launcher_configs_are_there():
    assert [p.stem for p in LAUNCHER_CONFIGS] == [
        "deepspeed_zero2",
        "deepspeed_zero3",
        "fsdp",
        "multi_gpu_ddp",
        "multi_node",
        "single_gpu",
    ]


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.stem)
def test_launcher_configs_load_in_accelerate_in_bf16_and_get_the_documented_verdict(path):
    from accelerate.commands.config.config_args import load_config_from_file

    launch = load_config_from_file(str(path))  # accelerate's own loader: unknown keys raise
    assert launch.mixed_precision == "bf16"
    zero_stage = (launch.deepspeed_config or {}).get("zero_stage")
    accelerator = launcher(DistributedType(launch.distributed_type), zero_stage)
    if path.stem in REFUSED_LAUNCHERS:
        with pytest.raises(UnsupportedDistributedSetup):
            check_distributed_support(config(), accelerator)
    elif path.stem == "fsdp":  # the stages shard the model themselves; a quantized base cannot be sharded
        check_distributed_support(config(), accelerator)
        with pytest.raises(UnsupportedDistributedSetup):
            check_distributed_support(config(load_in_4bit=True), accelerator)
    else:
        check_distributed_support(config(load_in_4bit=True), accelerator)
