"""PPO's settings (``PPOConfig``) and the checks that run before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alignment.core.config import ConfigError, DataConfig, LoraConfig, ModelConfig, QuantConfig, TrainConfig
from alignment.modeling.refusal import check_detector_name
from alignment.rl.critic_free import ALGORITHMS, GROUP_ALGORITHMS


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class PPOConfig:
    algorithm: str = _help(
        "The policy-gradient estimator: ppo (a learned critic and GAE), or a critic-free one that needs no value "
        "adapter: rloo (leave-one-out baseline over samples_per_prompt samples), grpo (group-normalised scores, the "
        "KL in the loss) or reinforce_pp (REINFORCE++: per-token KL in the reward, returns whitened over the batch).",
        default="ppo",
    )
    samples_per_prompt: int = _help(
        "Responses sampled per prompt in each update (K); rloo and grpo need at least 2. An update takes "
        "rollout_batch_size prompts and samples rollout_batch_size * K responses; mini_batch_size counts responses.",
        default=1,
    )
    sft_model_path: str | None = _help(
        "SFT stage output (policy init and KL reference); default: model_name_or_path.", default=None
    )
    reward_model_paths: list[str] = _help(
        "Reward stage outputs (or sequence-classification models).", default_factory=list
    )
    reward_weights: list[float] = _help(
        "Weight of each reward model's normalised score (default 1 each).", default_factory=list
    )
    reward_weights_by_label: dict[str, list[float]] = _help(
        "Other weights for the prompts of a label, one per reward model: {harmful: [0, 1]} scores answers to "
        "harmful prompts by the second model alone (Llama 2's safety reward on safety prompts, Touvron et al. "
        "2023). Prompts of other labels, or none, take reward_weights. Labels come from the prompt file or from "
        "prompt_labels.",
        default_factory=dict,
    )
    refusal_reward_by_label: dict[str, float] = _help(
        "A rule-based reward for refusing, by prompt label, added to the score of each response that "
        "refusal_reward_detector calls a refusal: {harmful: 1.0, safe: -1.0} pays for refusing a harmful request "
        "and charges for refusing a safe one (rule-based rewards, Mu et al. 2024). A reward model trained on "
        "comparisons may not tell a needless refusal from a right one; a rule keyed by the prompt's label does. "
        "Labels come from the prompt file or from prompt_labels.",
        default_factory=dict,
    )
    refusal_reward_detector: str = _help(
        "The detector of refusal_reward_by_label: phrase (refusal phrases at the opening of the response) or "
        "classifier (the learned detector evaluation uses by default). With phrase, evaluation's classifier judges "
        "refusals independently of what PPO was paid for.",
        default="phrase",
    )
    refusal_reward_baseline: str = _help(
        "How algorithm rloo baselines refusal_reward_by_label's rule reward: group (with the rest of the reward, by "
        "the prompt's other samples) or none (a baseline of 0, still unbiased). With group, a prompt whose samples "
        "all refuse, or all answer, teaches nothing about refusing it: a safe prompt the policy always refuses is "
        "never charged. With none, every refusal is paid or charged its label's value.",
        default="group",
    )
    stratify_by_label: bool = _help(
        "Fill each update with every prompt label in its share of the prompts (stratified sampling) instead of a "
        "plain shuffle. With refusal_reward_by_label, the pay for refusing harmful prompts and the charge for "
        "refusing safe ones then arrive in the same update. Labels come from the prompt file or from prompt_labels.",
        default=False,
    )
    ptx_coef: float = _help(
        "PPO-ptx (InstructGPT, Ouyang et al. 2022, eq. 2): weight gamma of the log-likelihood of ptx_dataset_name's "
        "demonstrations (assistant tokens, as SFT's loss), added to every policy step. It holds the policy to the "
        "demonstrations while the reward moves it; the KL penalty holds it only on what it samples. 0: off.",
        default=0.0,
    )
    ptx_dataset_name: str | None = _help(
        "The demonstrations of the ptx term: a file, a Hub id, or 'demo' (the built-in demonstrations).", default=None
    )
    ptx_batch_size: int = _help("Demonstrations per policy step in the ptx term.", default=4)
    ptx_select_rows: dict[str, list[str]] = _help(
        "Keep only the ptx demonstrations whose column holds one of these values, as select_rows does for a stage's "
        "data: {category: [safe, helpful]} holds the policy to the answers to safe requests only.",
        default_factory=dict,
    )
    cost_model_path: str | None = _help("A harmfulness (cost) model for the PPO-Lagrangian constraint.", default=None)
    cost_model_is_reward: bool = _help(
        "cost_model_path is a harmlessness reward model (higher = safer): the cost is its negated normalised score.",
        default=False,
    )
    cost_threshold: float = _help("Constraint: mean normalised cost must stay below this.", default=0.0)
    lagrange_init: float = _help("Initial Lagrange multiplier.", default=1.0)
    lagrange_lr: float = _help("Lagrange multiplier learning rate.", default=0.05)
    critic_init: str = _help(
        "auto, reward (value adapter from the reward adapter) or sft (zero value head).", default="auto"
    )
    critic_warmup_steps: int = _help("Updates that train only the critic before the policy moves.", default=0)
    padding_free: bool = _help(
        "Pack sequences into rows without padding for every pass after generation (exact; skips the padding).",
        default=True,
    )
    rollout_logprobs: str = _help(
        "Source of the rollout's log-probs: generate (the sampling logits, no extra pass), recompute (a packed "
        "no-grad policy pass, rounded as the update's forward is), or auto (recompute when the passes run in "
        "bf16/fp16, where the two differ: KL 0.11 nats per sequence between identical policies otherwise).",
        default="auto",
    )
    generation_weights: str = _help(
        "What sampling runs: adapter (the base and the policy's LoRA layers, as training does), merged (the policy "
        "folded into a copy of the adapted weights, rebuilt for each rollout: 1.5x faster sampling in bf16 on a "
        "CPU, at one more copy of those weights; its logits differ from the adapter's by rounding), or auto (merged "
        "when the rollout's log-probs are recomputed by a packed pass anyway, see rollout_logprobs; else adapter).",
        default="auto",
    )
    fsdp_generation: str = _help(
        "With fsdp: true, how generation reads the sharded blocks: per_layer (each block all-gathered for each "
        "decoding step and freed after it: the memory stays sharded, at one all-gather per block per token) or "
        "full (every block gathered once for the rollout's sampling and kept until it ends: fewer all-gathers, the "
        "whole base in memory while sampling).",
        default="per_layer",
    )
    total_episodes: int = _help("Prompts to sample in total (episodes).", default=64)
    rollout_batch_size: int = _help("Prompts per PPO update per process.", default=8)
    mini_batch_size: int = _help(
        "Sequences per gradient step inside an update. Equal to rollout_batch_size, the first step reuses the "
        "rollout's critic (and, under bf16/fp16, policy) passes: one forward fewer each, both graphs held until then.",
        default=8,
    )
    ppo_epochs: int = _help("Passes over each rollout batch.", default=1)
    max_new_tokens: int = _help("Longest response.", default=48)
    max_prompt_length: int = _help("Longer prompts are truncated from the left.", default=256)
    temperature: float = _help("Sampling temperature (log-probs use the same one).", default=0.7)
    top_k: int = _help("Must be 0: top-k sampling biases the KL estimate.", default=0)
    top_p: float = _help("Must be 1.0: nucleus sampling biases the KL estimate.", default=1.0)
    repetition_penalty: float = _help("Must be 1.0: it changes the sampled distribution.", default=1.0)
    kl_coef: float = _help("KL penalty coefficient beta (initial value when adaptive).", default=0.05)
    kl_estimator: str = _help("Per-token KL in the reward: k1 (unbiased log-ratio) or k3.", default="k1")
    adaptive_kl: bool = _help("Adapt beta towards kl_target (Ziegler et al. 2019).", default=False)
    kl_target: float = _help("Target per-sequence KL (nats) for the adaptive controller and the alarm.", default=6.0)
    kl_horizon: int = _help("Adaptive controller horizon (episodes).", default=10000)
    kl_stop_factor: float = _help("Stop when KL exceeds this multiple of kl_target.", default=10.0)
    entropy_floor: float = _help(
        "Stop when the policy's mean entropy per token falls below this (nats): it has collapsed.", default=1e-3
    )
    gamma: float = _help("GAE discount.", default=1.0)
    lam: float = _help("GAE lambda.", default=0.95)
    clip_eps: float = _help("PPO policy clip range.", default=0.2)
    value_clip_eps: float = _help("Value clip range.", default=0.2)
    vf_coef: float = _help("Value loss weight.", default=0.1)
    value_learning_rate: float | None = _help("Critic learning rate (default: learning_rate).", default=None)
    whiten_rewards: bool = _help("Whiten the shaped rewards before GAE.", default=False)
    reward_clip: float = _help("Clip the combined normalised score to +-this.", default=10.0)
    missing_eos_penalty: float = _help("Subtracted from the score of responses without EOS.", default=1.0)
    sample_table_steps: int = _help("Write a table of prompts and responses every N updates.", default=5)
    eval_prompts: int = _help("Held-out prompts whose fresh-sample reward is measured before and after.", default=16)
    policy_snapshots: bool = _help(
        "At each checkpoint also export the policy to snapshots/step-N (loadable; for the over-optimisation curve).",
        default=True,
    )

    def __post_init__(self) -> None:
        for key in (
            "total_episodes",
            "rollout_batch_size",
            "mini_batch_size",
            "ppo_epochs",
            "max_new_tokens",
            "samples_per_prompt",
            "ptx_batch_size",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.ptx_coef < 0:
            raise ValueError(f"ptx_coef must be at least 0, got {self.ptx_coef}")
        if self.ptx_coef and not self.ptx_dataset_name:
            raise ValueError("ptx_coef is set but ptx_dataset_name is not: name the demonstrations (a file, or 'demo')")
        for column, values in self.ptx_select_rows.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"ptx_select_rows: {column!r} needs a list of the values to keep, got {values!r}")
        if self.max_prompt_length < 1 or self.eval_prompts < 0:
            raise ValueError("max_prompt_length must be at least 1 and eval_prompts at least 0")


CONFIG_TYPES = (ModelConfig, LoraConfig, QuantConfig, DataConfig, TrainConfig, PPOConfig)


def validate_sampling(cfg: PPOConfig) -> None:
    """Reject sampling settings under which the KL and the log-prob ratio are computed on the wrong distribution."""
    problems = []
    if cfg.top_k != 0:
        problems.append(f"top_k={cfg.top_k}")
    if cfg.top_p != 1.0:
        problems.append(f"top_p={cfg.top_p}")
    if cfg.repetition_penalty != 1.0:
        problems.append(f"repetition_penalty={cfg.repetition_penalty}")
    if cfg.temperature <= 0:
        problems.append(f"temperature={cfg.temperature} (greedy)")
    if problems:
        raise ConfigError(
            f"PPO sampling must be plain temperature sampling, but {', '.join(problems)} was set: the log-probs "
            "PPO optimises and the KL penalty are computed from softmax(logits / temperature), so truncated or "
            "penalised sampling draws from another distribution and biases both (negative KL, trl#1017)."
        )
    check_algorithm(cfg)
    if cfg.kl_estimator not in ("k1", "k3"):
        raise ConfigError(f"kl_estimator must be k1 or k3, got {cfg.kl_estimator!r}")
    check_rollout_logprobs(cfg.rollout_logprobs)  # here too, so a typo fails before any model is loaded
    check_generation_weights(cfg.generation_weights)
    if cfg.fsdp_generation not in ("per_layer", "full"):
        raise ConfigError(f"fsdp_generation must be per_layer or full, got {cfg.fsdp_generation!r}")
    if not cfg.reward_model_paths:
        raise ConfigError("PPO needs at least one reward model: set reward_model_paths (a reward stage's output)")
    if cfg.reward_weights and len(cfg.reward_weights) != len(cfg.reward_model_paths):
        raise ConfigError("reward_weights needs one weight per entry of reward_model_paths")
    for label, weights in cfg.reward_weights_by_label.items():
        if not isinstance(weights, list) or len(weights) != len(cfg.reward_model_paths):
            raise ConfigError(
                f"reward_weights_by_label: {label!r} needs a list of one weight per entry of reward_model_paths "
                f"({len(cfg.reward_model_paths)}), got {weights!r}"
            )
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
            raise ConfigError(f"reward_weights_by_label: {label!r} weights must be numbers, got {weights!r}")
    for label, value in cfg.refusal_reward_by_label.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"refusal_reward_by_label: {label!r} needs one number, got {value!r}")
    check_detector_name(cfg.refusal_reward_detector, "refusal_reward_detector")
    if cfg.refusal_reward_baseline not in ("group", "none"):
        raise ConfigError(f"refusal_reward_baseline must be group or none, got {cfg.refusal_reward_baseline!r}")
    if cfg.refusal_reward_baseline == "none" and (cfg.algorithm != "rloo" or not cfg.refusal_reward_by_label):
        raise ConfigError(
            "refusal_reward_baseline: none applies to algorithm rloo with a refusal_reward_by_label rule "
            f"(algorithm is {cfg.algorithm!r}, refusal_reward_by_label {cfg.refusal_reward_by_label or '{}'})"
        )


def check_algorithm(cfg: PPOConfig) -> None:
    """The estimator exists, and its settings fit it (a group baseline needs a group; no critic, no critic settings)."""
    if cfg.algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, got {cfg.algorithm!r}")
    if cfg.algorithm in GROUP_ALGORITHMS and cfg.samples_per_prompt < 2:
        raise ConfigError(
            f"algorithm {cfg.algorithm} baselines each sample with the prompt's other samples: set samples_per_prompt "
            f"to 2 or more (got {cfg.samples_per_prompt})"
        )
    if cfg.algorithm != "ppo" and (cfg.critic_warmup_steps or cfg.critic_init != "auto"):
        raise ConfigError(
            f"algorithm {cfg.algorithm} has no critic: critic_warmup_steps and critic_init apply to algorithm ppo only"
        )


def check_rollout_logprobs(choice: str) -> str:
    if choice not in ("auto", "generate", "recompute"):
        raise ConfigError(f"rollout_logprobs: expected auto, generate or recompute, got {choice!r}")
    return choice


def check_generation_weights(choice: str) -> str:
    if choice not in ("auto", "adapter", "merged"):
        raise ConfigError(f"generation_weights: expected auto, adapter or merged, got {choice!r}")
    return choice
