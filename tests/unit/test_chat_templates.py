"""Templates of other model families, written from their published formats (the real tokenizers are not reachable
offline): a template without a system role, and one that writes an empty reasoning block before a reply."""

from __future__ import annotations

import copy
import logging

import pytest

from alignment.data.chat_template import ChatTemplateError, assistant_char_spans, fold_system_message
from alignment.data.collate import render_sft_example
from data_schemas.records import Demonstration, Message

# Gemma 1/2: no system role (the template raises), user/model turns.
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
    "{% endif %}"
)
# Qwen3 (ChatML): the reply after the last user turn is written after an empty <think></think> block.
REASONING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and loop.last %}<|im_start|>assistant\n<think>\n\n"
    "</think>\n\n{{ m['content'] }}<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def with_template(tokenizer, template: str, specials: tuple[str, ...] = ()):
    tokenizer = copy.deepcopy(tokenizer)
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": list(specials)})
    tokenizer.chat_template = template
    return tokenizer


def test_a_template_without_a_system_role_gets_it_in_the_first_user_turn(embedded_tokenizer, caplog):
    tokenizer = with_template(embedded_tokenizer, NO_SYSTEM_TEMPLATE, ("<start_of_turn>", "<end_of_turn>"))
    demo = Demonstration((Message("system", "Be brief."), Message("user", "2+2?"), Message("assistant", "4")))
    with caplog.at_level(logging.WARNING):
        example = render_sft_example(tokenizer, demo, 128)
        render_sft_example(tokenizer, demo, 128)
    text = tokenizer.decode(example.input_ids)
    assert "<start_of_turn>user\nBe brief.\n\n2+2?<end_of_turn>" in text
    learned = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != -100])
    assert learned == "4<end_of_turn>"
    assert sum("refuses a system message" in r.message for r in caplog.records) == 1  # said once, not per record


def test_folding_keeps_every_other_turn():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    assert fold_system_message(messages) == [
        {"role": "user", "content": "S\n\nU1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    assert messages[1]["content"] == "U1"  # the caller's messages are not changed


def test_an_empty_reasoning_block_before_the_reply_is_learned_with_it(embedded_tokenizer):
    tokenizer = with_template(embedded_tokenizer, REASONING_TEMPLATE)
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    text, [(start, end)] = assistant_char_spans(tokenizer, messages, [1])
    assert text[start:end] == "<think>\n\n</think>\n\n4<|im_end|>"


def test_a_template_that_rewrites_earlier_turns_is_named_in_the_error(embedded_tokenizer):
    tokenizer = with_template(embedded_tokenizer, REASONING_TEMPLATE)
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    with pytest.raises(ChatTemplateError, match="not prefix-stable.*rewrite earlier turns"):
        assistant_char_spans(tokenizer, messages, [1, 3])


def test_the_built_in_gemma_turn_format_learns_model_turns_and_stops_at_end_of_turn(embedded_tokenizer):
    from alignment.modeling.sources import ModelLoadError
    from alignment.modeling.tokenizer import apply_chat_template_setting, stop_token_ids

    tokenizer = with_template(embedded_tokenizer, "", ("<start_of_turn>", "<end_of_turn>"))
    apply_chat_template_setting(tokenizer, "gemma")
    demo = Demonstration((Message("system", "Be brief."), Message("user", "2+2?"), Message("assistant", "4")))
    example = render_sft_example(tokenizer, demo, 128)
    text = tokenizer.decode(example.input_ids)
    assert "<start_of_turn>user\nBe brief.\n\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>" in text
    learned = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label != -100])
    assert learned == "4<end_of_turn>"
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in stop_token_ids(tokenizer)
    with pytest.raises(ModelLoadError, match="needs the tokens"):
        apply_chat_template_setting(copy.deepcopy(embedded_tokenizer), "gemma")
