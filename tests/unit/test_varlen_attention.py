"""Flat packed rows (sdpa_varlen) give each sequence what the model's own attention gives it alone, sliding-window
layers included, on sequences longer than the window. (Gemma 2, whose attention logits are capped, does not run on
SDPA in transformers, so it never takes this path; the cap is checked on the attention function itself.)"""

from __future__ import annotations

import torch

from alignment.modeling.attention import SDPA_VARLEN, register, sequence_attention, varlen_kwargs


def tiny_gemma3() -> torch.nn.Module:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    shared = {
        "vocab_size": 128,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "num_hidden_layers": 2,
        "sliding_window": 4,
        "max_position_embeddings": 64,
    }
    torch.manual_seed(0)
    # A sliding layer, then a full-attention one (Gemma 3 has five to one).
    config = Gemma3TextConfig(**shared, layer_types=["sliding_attention", "full_attention"])
    return Gemma3ForCausalLM(config).eval()


def test_packed_sequences_match_each_sequence_run_alone():
    model = tiny_gemma3()
    model.set_attn_implementation("eager")  # the reference: the model's own masks, window and cap
    lengths = [11, 3, 9]  # two longer than the window of 4
    torch.manual_seed(1)
    sequences = [torch.randint(1, 128, (n,)) for n in lengths]
    with torch.no_grad():
        alone = [model(input_ids=s.unsqueeze(0)).logits[0] for s in sequences]
        register()
        model.set_attn_implementation(SDPA_VARLEN)
        flat = torch.cat(sequences).unsqueeze(0)
        positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
        bounds = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
        packed = model(input_ids=flat, position_ids=positions, use_cache=False, **varlen_kwargs(bounds)).logits[0]
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-4)


def test_capped_scores_and_the_window_match_eager_attention_by_hand():
    torch.manual_seed(2)
    query, key, value = (torch.randn(1, 2, 6, 4) for _ in range(3))
    scale, cap, window = 0.5, 0.3, 3
    scores = cap * torch.tanh(query @ key.transpose(2, 3) * scale / cap)
    i = torch.arange(6)
    allowed = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
    expected = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ value
    torch.testing.assert_close(sequence_attention(query, key, value, 0.0, scale, window, cap), expected)


def test_packed_gradients_match_each_sequence_run_alone():
    """The backward pass through a packed row gives each weight the summed gradient of the sequences run alone."""
    model = tiny_gemma3()
    lengths = [5, 11, 2, 7]
    torch.manual_seed(3)
    sequences = [torch.randint(1, 128, (n,)) for n in lengths]
    for sequence in sequences:
        model(input_ids=sequence.unsqueeze(0)).logits.square().sum().backward()
    alone = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    register()
    model.set_attn_implementation(SDPA_VARLEN)
    flat = torch.cat(sequences).unsqueeze(0)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    bounds = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    model(
        input_ids=flat, position_ids=positions, use_cache=False, **varlen_kwargs(bounds)
    ).logits.square().sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, alone[name], atol=1e-4, rtol=1e-4, msg=name)


def test_short_sequences_attend_in_fp32_under_cpu_autocast():
    """Under CPU bf16 autocast a short sequence's attention is the fp32 result rounded once to bf16 (faster there
    than bf16's own kernel, and more exact); a long one keeps autocast's bf16 kernel."""
    import torch.nn.functional as F

    from alignment.modeling.attention import CPU_FP32_ATTENTION_MAX_LENGTH

    torch.manual_seed(4)
    for n in (CPU_FP32_ATTENTION_MAX_LENGTH, CPU_FP32_ATTENTION_MAX_LENGTH + 1):
        query, key, value = (torch.randn(1, 3, n, 16) for _ in range(3))
        exact = F.scaled_dot_product_attention(query, key, value, is_causal=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = sequence_attention(query, key, value, 0.0, None)
            in_bf16 = F.scaled_dot_product_attention(query, key, value, is_causal=True)
        assert out.dtype == torch.bfloat16
        if n <= CPU_FP32_ATTENTION_MAX_LENGTH:
            torch.testing.assert_close(out, exact.to(torch.bfloat16), atol=0, rtol=0)
            assert (out.float() - exact).abs().mean() < (in_bf16.float() - exact).abs().mean()
        else:
            torch.testing.assert_close(out, in_bf16, atol=0, rtol=0)


def test_shared_prefix_blocks_give_each_sequence_its_own_logits_and_gradients():
    """Sequences that share a prefix, packed as the prefix once and each one's suffix (pack_shared_prefixes): every
    token gets the logits it has in its own sequence, through a sliding-window layer whose window (4) is shorter
    than the prefix, and the gradients are those of the sequences run alone."""
    from alignment.data.packing import pack_shared_prefixes

    model = tiny_gemma3()
    torch.manual_seed(4)
    prompt = torch.randint(1, 128, (7,)).tolist()
    groups = [
        [prompt + [5, 6, 7], prompt + [9], prompt + [5, 6, 8, 3, 2]],  # the first two suffix tokens shared by two
        [torch.randint(1, 128, (6,)).tolist()],  # a group of one: an ordinary sequence
        [[3, 4, 5], [3, 4, 5, 6]],  # one sequence a prefix of the other: it keeps its last token
    ]
    sequences = [torch.tensor(s) for group in groups for s in group]
    for sequence in sequences:
        model(input_ids=sequence.unsqueeze(0)).logits[0, -1].square().sum().backward()
    alone_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        alone_last = torch.stack([model(input_ids=s.unsqueeze(0)).logits[0, -1] for s in sequences])
    model.zero_grad()
    register()
    model.set_attn_implementation(SDPA_VARLEN)
    packed = pack_shared_prefixes(groups, pad_value=0, multiple_of=16)
    assert packed.branch_lengths[0] == (7, 3, 1, 5) and packed.branch_lengths[1:3] == ((6,), (2, 1, 2))
    assert packed.num_tokens == 7 + 9 + 6 + 5 and packed.input_ids.shape[1] == 32  # rounded up with filler
    assert packed.position_ids[0, 7:16].tolist() == [7, 8, 9, 7, 7, 8, 9, 10, 11]
    logits = model(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        use_cache=False,
        **varlen_kwargs(packed.cu_seq_lens, packed.branch_lengths),
    ).logits[0]
    last = logits[packed.last_token_index]
    last.square().sum().backward()
    torch.testing.assert_close(last.detach(), alone_last, atol=1e-5, rtol=1e-4)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, alone_grads[name], atol=1e-4, rtol=1e-4, msg=name)


def test_branch_lengths_that_do_not_cover_the_blocks_are_refused():
    import pytest

    bounds = torch.tensor([0, 5, 8], dtype=torch.int32)
    assert varlen_kwargs(bounds, ((2, 1, 2), (3,)))["branch_lengths"] == ((2, 1, 2), (3,))
    with pytest.raises(ValueError, match="do not match the blocks"):
        varlen_kwargs(bounds, ((2, 1, 1), (3,)))


def test_branched_attention_equals_the_block_mask():
    """Per-suffix attention over [prefix | suffix] gives what the block's full prefix-tree mask gives, an empty
    prefix included."""
    import torch.nn.functional as F

    from alignment.modeling.attention import branched_attention, prefix_tree_mask

    torch.manual_seed(5)
    for branches in ((5, 3, 1, 4), (0, 2, 3), (4, 2)):
        query, key, value = (torch.randn(1, 2, sum(branches), 8, requires_grad=True) for _ in range(3))
        allowed, _ = prefix_tree_mask(branches, query.device)
        masked = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed)
        grads = torch.autograd.grad(masked.square().sum(), (query, key, value))
        branched = branched_attention(query, key, value, branches, 0.0, None)
        torch.testing.assert_close(branched, masked)
        for got, want in zip(torch.autograd.grad(branched.square().sum(), (query, key, value)), grads):
            torch.testing.assert_close(got, want)
