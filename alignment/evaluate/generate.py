"""Running the policies: loading, seeded sampling, teacher-forced log-probs for the KL, and reward scoring.

Per policy it produces the responses to the evaluation prompts (with their length and whether they ended with EOS)
and the KL to the reference on the policy's own samples, ``sum_t log pi(y_t) - log pi_ref(y_t)`` by teacher forcing:
the Monte-Carlo estimate of KL(pi || pi_ref) that the PPO penalty uses (Ziegler et al. 2019, eq. 2). Generations and
KL are saved and reused through :mod:`alignment.evaluate.prompts`.

Policies are loaded one at a time and freed; the reference stays loaded because every KL needs it. Reward models
are loaded one at a time too, after all generations exist.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from alignment.core.config import Config, ModelConfig
from alignment.core.tracking import progress
from alignment.data.collate import PromptCollator
from alignment.evaluate.prompts import (
    GENERATIONS_DIR,
    _cached_kl,
    _hash,
    _save_kl,
    generation_key,
    import_saved_generations,
    load_generations,
    sampling_settings,
    save_generations,
)
from alignment.evaluate.records import EvalPrompt, Generation, PolicyOutputs, PolicySpec
from alignment.modeling.attention import supports_flat_packing, supports_shared_prefixes
from alignment.modeling.module_utils import unwrap_transformers_model
from alignment.modeling.sequences import SequenceBatch, response_logprobs
from alignment.rl.logprobs import first_eos_mask

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- models


def _policy_model_cfg(model_cfg: ModelConfig, path: str) -> ModelConfig:
    """The recipe's model settings (dtype, chat template, ...) applied to one policy."""
    return dataclasses.replace(model_cfg, model_name_or_path=path)


def load_policy(cfg: Config, spec: PolicySpec, device: torch.device) -> tuple[Any, Any]:
    """A frozen policy in eval mode without dropout, and its left-padding tokenizer."""
    from alignment.modeling.load import load_causal_lm
    from alignment.modeling.tokenizer import load_tokenizer  # imports transformers

    model_cfg = _policy_model_cfg(cfg.model, spec.path)
    tokenizer = load_tokenizer(model_cfg, padding_side="left")
    model = load_causal_lm(
        model_cfg, cfg.lora, cfg.quant, trainable=False, device=device, tokenizer=tokenizer, dropout=False
    )
    model.eval()
    logger.info("loaded policy %s from %s", spec.name, spec.path)
    return model, tokenizer


@torch.no_grad()
def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[EvalPrompt],
    settings: dict[str, Any],
    batch_size: int,
    desc: str = "generate",
) -> list[Generation]:
    """Batched sampling: one :class:`Generation` per prompt, in order.

    Row ``i`` (the i-th prompt, or the i-th answer with ``answers_per_prompt``) draws from its own random
    stream, seeded from ``settings["seed"]`` and ``i``: every policy draws row i's answer from the same
    stream (common random numbers, so policies differ by their weights, not their luck), and an answer does
    not depend on ``batch_size``. ``temperature`` 0 decodes greedily.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    from alignment.modeling.generation import RowStreamSampler, generation_cache, row_seed  # imports transformers
    from alignment.modeling.tokenizer import stop_token_ids  # imports transformers

    collator = PromptCollator(tokenizer, settings["max_prompt_length"])
    eos_ids = stop_token_ids(tokenizer, model)
    # Greedy over RowStreamSampler's scores (one drawn token left per row): plain temperature sampling, no top-k or
    # top-p, so the KL below estimates the KL of the sampled distribution.
    gen_cfg = GenerationConfig(
        do_sample=False,
        max_new_tokens=settings["max_new_tokens"],
        repetition_penalty=1.0,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    device = next(model.parameters()).device
    out: list[Generation] = []
    for start in progress(range(0, len(prompts), batch_size), desc=desc):
        batch = prompts[start : start + batch_size]
        encoded = collator([p.prompt for p in batch])
        prompt_ids, prompt_mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
        cache = generation_cache(model, prompt_ids, prompt_mask, gen_cfg)  # packed prefill, in-place cache
        processors = LogitsProcessorList()
        if settings["temperature"] > 0:
            seeds = [row_seed(settings["seed"], start + i) for i in range(len(batch))]
            processors.append(RowStreamSampler(settings["temperature"], seeds))
        sequences = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            generation_config=gen_cfg,
            logits_processor=processors,
            **({"cache": cache} if cache is not None else {}),
        )
        response_ids = sequences[:, prompt_ids.shape[1] :].cpu()
        mask, has_eos = first_eos_mask(response_ids, eos_ids, tokenizer.pad_token_id)
        for i, p in enumerate(batch):
            ids = response_ids[i][mask[i]].tolist()
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            out.append(
                Generation(start + i, p.prompt.messages, p.label, p.format, text, len(ids), bool(has_eos[i]), ids)
            )
    return out


def _pad_responses(generations: Sequence[Generation], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T)`` right-padded response ids and their mask (T >= 1)."""
    length = max(1, max(len(g.response_ids) for g in generations))
    ids = torch.full((len(generations), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(generations), length), dtype=torch.bool)
    for i, g in enumerate(generations):
        ids[i, : len(g.response_ids)] = torch.tensor(g.response_ids, dtype=torch.long)
        mask[i, : len(g.response_ids)] = True
    return ids, mask


@torch.no_grad()
def response_logprob_sums(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """``(B,)`` sum over valid response tokens of ``log softmax(logits / T)[y_t]``, by teacher forcing.

    The same pass PPO takes for its policy and reference (:func:`alignment.modeling.sequences.response_logprobs`),
    on packed rows without padding (each prompt once for its answers).
    """
    causal_lm = unwrap_transformers_model(model)
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    response_ids, response_mask = response_ids.to(device), response_mask.to(device).bool()
    batch = SequenceBatch.build(prompt_ids, prompt_mask, response_ids, response_mask)
    logprobs, _ = response_logprobs(
        causal_lm.base_model,
        causal_lm.get_output_embeddings(),
        batch,
        response_ids,
        temperature,
        padding_free=True,
        flat=supports_flat_packing(causal_lm),
        share_prompts=supports_shared_prefixes(causal_lm),  # k answers to one prompt (answers_per_prompt)
    )
    return torch.where(response_mask, logprobs, torch.zeros_like(logprobs)).sum(-1).cpu()


def sequence_kl(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: Sequence[EvalPrompt],
    generations: Sequence[Generation],
    settings: dict[str, Any],
    batch_size: int,
) -> list[float]:
    """Per response ``sum_t log pi(y_t|x, y_<t) - log pi_ref(y_t|x, y_<t)`` on the policy's own samples.

    Its mean is the k1 Monte-Carlo estimate of KL(pi || pi_ref) when the responses were sampled from pi at the same
    temperature: both log-probs are taken of ``softmax(logits / T)``, the distribution the samples were drawn from,
    not of the untempered model. With greedy decoding (temperature 0) the responses are not samples and the number
    is only the log-ratio of the greedy responses (computed at temperature 1).
    """
    temperature = settings["temperature"] if settings["temperature"] > 0 else 1.0
    collator = PromptCollator(tokenizer, settings["max_prompt_length"])
    kl: list[float] = []
    for start in progress(range(0, len(generations), batch_size), desc="kl"):
        batch = generations[start : start + batch_size]
        encoded = collator([p.prompt for p in prompts[start : start + batch_size]])
        response_ids, response_mask = _pad_responses(batch, tokenizer.pad_token_id)
        args = (encoded["input_ids"], encoded["attention_mask"], response_ids, response_mask, temperature)
        kl += (response_logprob_sums(policy, *args) - response_logprob_sums(reference, *args)).tolist()
    return kl


def same_vocabulary(tokenizer_a: Any, tokenizer_b: Any) -> bool:
    """Token-level KL needs both models to read the same token ids."""
    return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


# ----------------------------------------------------------------------------------------------- running policies


class _Reference:
    """The reference policy: loaded on first need, then kept, since the KL of every other policy needs it."""

    def __init__(self, cfg: Config, spec: PolicySpec, device: torch.device) -> None:
        self.cfg, self.spec, self.device = cfg, spec, device
        self.model: Any = None
        self.tokenizer: Any = None

    def get(self) -> tuple[Any, Any]:
        if self.model is None:
            self.model, self.tokenizer = load_policy(self.cfg, self.spec, self.device)
        return self.model, self.tokenizer

    def close(self) -> None:
        if self.model is not None:
            self.model = self.tokenizer = None
            _release_memory()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _kl_against_reference(
    cfg: Config,
    model: Any,
    tokenizer: Any,
    reference: _Reference,
    prompts: Sequence[EvalPrompt],
    generations: list[Generation],
) -> tuple[list[float] | None, str]:
    ref_model, ref_tokenizer = reference.get()
    if not same_vocabulary(tokenizer, ref_tokenizer):
        note = f"not computed: the tokenizer differs from the reference {reference.spec.name}'s"
        logger.warning("KL: %s", note)
        return None, note
    settings = sampling_settings(cfg)
    kl = sequence_kl(model, ref_model, tokenizer, prompts, generations, settings, cfg.train.per_device_eval_batch_size)
    return kl, f"teacher-forced against {reference.spec.name}"


def policy_outputs(
    cfg: Config,
    spec: PolicySpec,
    is_reference: bool,
    reference: _Reference,
    prompts: Sequence[EvalPrompt],
    gen_dir: Path,
) -> PolicyOutputs:
    """Generations (saved or fresh) and per-sample KL of one policy; the policy is loaded only when needed."""
    settings = sampling_settings(cfg)
    k = cfg.evaluate.answers_per_prompt
    key = generation_key(spec, prompts, settings, cfg.model)
    reference_key = generation_key(reference.spec, prompts, settings, cfg.model)
    kl_key = _hash([key, reference_key, "kl"])
    generations = load_generations(gen_dir, spec.name, key, len(prompts)) if cfg.evaluate.reuse_generations else None
    same_weights = is_reference or key == reference_key  # the reference listed again (the curve's step 0)
    kl_known, kl = (True, [0.0] * len(prompts)) if same_weights else (False, None)
    if generations is not None and not same_weights:
        kl_known, kl = _cached_kl(gen_dir, spec.name, kl_key)
    if generations is not None and kl_known:
        logger.info("%s: reusing saved generations (%s)", spec.name, gen_dir)
        return PolicyOutputs(spec.name, spec.path, generations, kl=kl, step=spec.step, answers_per_prompt=k)
    model, tokenizer = reference.get() if is_reference else load_policy(cfg, spec, reference.device)
    try:
        if generations is None:
            generations = generate_responses(
                model, tokenizer, prompts, settings, cfg.evaluate.generation_batch_size, desc=f"generate {spec.name}"
            )
            save_generations(gen_dir, spec.name, key, generations, {"policy": spec.path, "settings": settings})
        if not kl_known:
            kl, note = _kl_against_reference(cfg, model, tokenizer, reference, prompts, generations)
            _save_kl(gen_dir, spec.name, kl_key, kl, note)
    finally:
        if not is_reference:
            model = tokenizer = None
            _release_memory()
    return PolicyOutputs(spec.name, spec.path, generations, kl=kl, step=spec.step, answers_per_prompt=k)


def collect_outputs(
    cfg: Config,
    specs: Sequence[PolicySpec],
    reference_index: int,
    prompts: Sequence[EvalPrompt],
    output_dir: Path,
    device: torch.device,
) -> list[PolicyOutputs]:
    """Run every policy (the reference first, kept loaded until the end) on the same prompts."""
    reference = _Reference(cfg, specs[reference_index], device)
    gen_dir = Path(output_dir) / GENERATIONS_DIR
    import_saved_generations(gen_dir, cfg.evaluate.generations_from)
    order = [reference_index] + [i for i in range(len(specs)) if i != reference_index]
    outputs: dict[int, PolicyOutputs] = {}
    try:
        for i in order:
            outputs[i] = policy_outputs(cfg, specs[i], i == reference_index, reference, prompts, gen_dir)
    finally:
        reference.close()
    return [outputs[i] for i in range(len(specs))]


def score_outputs(
    cfg: Config,
    outputs: Sequence[PolicyOutputs],
    reward_names: Sequence[str],
    device: torch.device,
    wanted: Callable[[PolicyOutputs, str], bool] = lambda out, name: True,
    also: Callable[[str, Any], None] | None = None,
) -> None:
    """Fill ``outputs[i].rewards[name]`` with raw scores, loading one reward model at a time; ``also(name, scorer)``
    runs on each loaded reward model (more scoring, without loading it again)."""
    for path, name in zip(cfg.evaluate.reward_model_paths, reward_names):
        targets = [out for out in outputs if wanted(out, name)]
        if not targets and also is None:
            continue
        scorer = load_eval_scorer(cfg, path, name, device)
        for out in progress(targets, desc=f"score {name}"):
            messages = [g.messages for g in out.generations]
            out.rewards[name] = scorer.score(messages, [g.response for g in out.generations]).tolist()
        if also is not None:
            also(name, scorer)
        scorer = None
        _release_memory()


def load_eval_scorer(cfg: Config, path: str, name: str, device: torch.device) -> Any:
    """A reward model for scoring evaluation answers: the recipe's batch size, quantization and ``max_length``."""
    from alignment.modeling.scoring import load_reward_scorer

    return load_reward_scorer(
        path,
        name=name,
        batch_size=cfg.train.per_device_eval_batch_size,
        quant_cfg=cfg.quant,
        device=device,
        max_length=cfg.train.max_length,
    )
