"""One stop rule for rollouts, evaluation and the missing-EOS penalty: every id that ends an assistant turn."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

from alignment.core.config_parsing import build_config
from alignment.modeling.tokenizer import stop_token_ids
from alignment.ppo import rollout
from alignment.ppo.stage import CONFIG_TYPES as PPO_CONFIG_TYPES
from alignment.rl.logprobs import first_eos_mask

# Gemma's turn format: a base model's tokenizer calls <eos> the end of text, yet a chat turn ends with <end_of_turn>.
GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def gemma_style(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = GEMMA_STYLE_TEMPLATE
    return tokenizer, tokenizer.convert_tokens_to_ids("<end_of_turn>")


def test_the_template_end_of_turn_token_stops_generation_besides_eos(embedded_tokenizer):
    tokenizer, end_of_turn = gemma_style(embedded_tokenizer)
    assert stop_token_ids(tokenizer) == sorted({tokenizer.eos_token_id, end_of_turn})
    # The model's generation config adds its own (Llama 3 lists <|eot_id|> there).
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[7, tokenizer.eos_token_id]))
    assert stop_token_ids(tokenizer, model) == sorted({7, tokenizer.eos_token_id, end_of_turn})
    # ChatML: the end-of-turn token is the EOS, nothing is added.
    assert stop_token_ids(embedded_tokenizer) == [embedded_tokenizer.eos_token_id]


def test_ppo_sampling_and_its_missing_eos_penalty_use_the_same_rule(embedded_tokenizer):
    tokenizer, end_of_turn = gemma_style(embedded_tokenizer)
    cfg = build_config(PPO_CONFIG_TYPES, {"dataset_name": "demo", "output_dir": "unused"})
    sampling = rollout.generation_config(cfg.ppo, tokenizer)
    assert sorted(sampling.eos_token_id) == stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id
    response = torch.tensor([[11, 12, end_of_turn, 13], [11, 12, 13, 14]])
    mask, has_eos = first_eos_mask(response, sampling.eos_token_id, pad)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]] and has_eos.tolist() == [True, False]
