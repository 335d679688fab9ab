"""Rendering conversations with a tokenizer's chat template, and finding where the assistant turns are.

Why not trl's ``DataCollatorForCompletionOnlyLM`` or ``assistant_only_loss`` / ``return_assistant_tokens_mask``
------------------------------------------------------------------------------------------------------------
``return_assistant_tokens_mask`` (what trl's ``assistant_only_loss`` uses) only works for templates
that wrap assistant text in ``{% generation %}`` blocks, which most models' templates lack (SmolLM2's
does not). ``DataCollatorForCompletionOnlyLM`` (gone from trl 1.x) needs hand-written response and
instruction marker strings per model and searches for their *token* sequences, which fails when the
marker's tokens merge differently with the text around them. Instead we find assistant spans by *incremental
rendering*: ``apply_chat_template(messages[:i], add_generation_prompt=True)`` ends where assistant
turn ``i`` starts and ``apply_chat_template(messages[:i + 1])`` ends after it; both must be string
prefixes of the whole rendering ("prefix-stable" template, else :class:`ChatTemplateError`). The
whole conversation is tokenized once and character spans are mapped to tokens with the offset
mapping (or, for tokenizers without offsets, by tokenizing prefixes and checking the prefix
property). This works for any prefix-stable template: ChatML, Zephyr, Llama-2/3, Gemma, ...

The end of the learned span is the last special token after the content (the end-of-turn token,
e.g. ``<|im_end|>``, ``<|eot_id|>``, ``</s>``); what follows it (the ``\\n`` separating turns) is
scaffolding. A template whose turns end without a special token learns the content only.

Tokenization: templated text already contains the special tokens the template wants, so it is
tokenized with ``add_special_tokens=False`` (as ``apply_chat_template(tokenize=True)`` does);
the plain-text fallback (tokenizers without a template, e.g. BERT reward models) lets the
tokenizer add its own ([CLS] ... [SEP]).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from data_schemas.records import Message

PLAIN_TEXT_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
EMPTY_REASONING = re.compile(r"\s*(<think>\s*</think>\s*)?")
logger = logging.getLogger(__name__)


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used to locate assistant turns."""


def message_dicts(messages: Sequence[Message] | Sequence[dict[str, str]]) -> list[dict[str, str]]:
    return [m.to_dict() if isinstance(m, Message) else {"role": m["role"], "content": m["content"]} for m in messages]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def fold_system_message(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system message(s) written at the start of the first user turn, for templates without a system role
    (Gemma 1 and 2 raise "System role not supported"). Gemma 3's own template folds it the same way."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    first_user = next((m for m in rest if m["role"] == "user"), None)
    if first_user is None:
        return rest
    first_user["content"] = "\n\n".join([*system, first_user["content"]])
    return rest


_warned_folding: set[str] = set()


def _apply(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> Any:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception:  # jinja's TemplateError from the template's raise_exception, or anything a template throws
        if not any(m["role"] == "system" for m in messages):
            raise
        folded = fold_system_message(messages)
        text = tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=add_generation_prompt)
        name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        if name not in _warned_folding:
            _warned_folding.add(name)
            logger.warning(
                "%s: the chat template refuses a system message; it is written at the start of the first user turn",
                name,
            )
        return text


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if not has_chat_template(tokenizer):
        raise ChatTemplateError(
            f"{type(tokenizer).__name__} has no chat template; set one (a tokenizer with a template, or "
            "tokenizer.chat_template) to train a chat model"
        )
    text = _apply(tokenizer, messages, add_generation_prompt)
    if not isinstance(text, str):
        raise ChatTemplateError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
    return text


def _render_plain_text(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The fallback for tokenizers without a template: ``User: ...\\n\\nAssistant: ...``."""
    parts = [f"{PLAIN_TEXT_ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    if add_generation_prompt:
        parts.append(f"{PLAIN_TEXT_ROLE_NAMES['assistant']}:")
    return "\n\n".join(parts)


def special_token_strings(tokenizer: Any) -> set[str]:
    """Every special token's text: the named ones and the added tokens marked special."""
    specials = set(getattr(tokenizer, "all_special_tokens", []))
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials.update(t.content for t in decoder.values() if getattr(t, "special", False))
    return {s for s in specials if s}


def _require_prefix(full: str, prefix: str, num_messages: int, generation_prompt: bool) -> int:
    if full.startswith(prefix):
        return len(prefix)
    differ_at = next((k for k, (a, b) in enumerate(zip(full, prefix)) if a != b), min(len(full), len(prefix)))
    what = "with the generation prompt " if generation_prompt else ""
    raise ChatTemplateError(
        f"the chat template is not prefix-stable: rendering the first {num_messages} messages {what}is not a "
        f"prefix of the whole conversation (they differ at character {differ_at}: "
        f"{prefix[differ_at : differ_at + 40]!r} vs {full[differ_at : differ_at + 40]!r}). Templates that rewrite "
        "earlier turns (e.g. drop past reasoning) or lack a generation prompt are not supported"
    )


def _end_of_turn(segment: str, content: str, message_index: int, specials: set[str]) -> int:
    """Length of ``segment`` (assistant turn as rendered) that is learned: content + end-of-turn token."""
    stripped = content.strip()
    at = segment.find(stripped)
    # Scaffolding the template writes before the content: nothing, or an empty reasoning block (Qwen3 writes
    # "<think>\n\n</think>\n\n" before a reply that did not reason; the model emits it too, so it is learned).
    if at < 0 or not EMPTY_REASONING.fullmatch(segment[:at]):
        raise ChatTemplateError(
            f"assistant message {message_index}: the rendered turn does not start with the message content "
            f"(got {segment[:60]!r}); the template's add_generation_prompt must emit the whole assistant header"
        )
    content_end = at + len(stripped)
    tail = segment[content_end:]
    ends = [tail.rfind(s) + len(s) for s in specials if s in tail]
    return content_end + (max(ends) if ends else len(tail.rstrip()))


def assistant_char_spans(
    tokenizer: Any, messages: list[dict[str, str]], turn_indices: Sequence[int]
) -> tuple[str, list[tuple[int, int]]]:
    """The whole rendering and, per assistant turn, the ``[start, end)`` characters that are learned."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    specials = special_token_strings(tokenizer)
    spans = []
    for i in turn_indices:
        start = _require_prefix(full, _render(tokenizer, messages[:i], True), i, generation_prompt=True)
        stop = _require_prefix(full, _render(tokenizer, messages[: i + 1], False), i + 1, generation_prompt=False)
        spans.append((start, start + _end_of_turn(full[start:stop], messages[i]["content"], i, specials)))
    return full, spans


def template_end_of_turn(tokenizer: Any) -> str | None:
    """The special token the chat template writes right after an assistant message (``<|im_end|>``,
    ``<end_of_turn>``, ``<|eot_id|>``, ``<|end|>``); None without a template or such a token."""
    if not has_chat_template(tokenizer):
        return None
    probe = "Probe reply."
    try:
        text = _render(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": probe}], False)
    except Exception:  # a template that rejects this minimal chat has nothing to tell us here
        return None
    tail = text[text.rfind(probe) + len(probe) :]
    found = [(tail.find(s), s) for s in special_token_strings(tokenizer) if s in tail]
    return min(found)[1] if found else None


def template_turn_tokens(tokenizer: Any) -> list[str]:
    """The special tokens the chat template writes around turns (``<start_of_turn>``, ``<end_of_turn>``,
    ``<|im_start|>``...), found by rendering a short chat with a generation prompt; BOS and padding left out."""
    if not has_chat_template(tokenizer):
        return []
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Ok"},
    ]
    try:
        text = _render(tokenizer, chat, True)
    except Exception:  # as in template_end_of_turn: nothing to learn from a template that rejects this chat
        return []
    skip = {getattr(tokenizer, "bos_token", None), getattr(tokenizer, "pad_token", None)}
    return sorted(s for s in special_token_strings(tokenizer) - skip if s in text)


def render_reward_texts(tokenizer: Any, prompt_messages: Sequence[Message], response: str) -> str:
    """The prompt + ``response`` as the reward model reads it.

    With a chat template: the template's own rendering, cut right after the assistant's
    end-of-turn token (no trailing newline), so the last token -- where the reward is read -- is
    the end-of-turn token. Without one: ``"User: ...\\n\\nAssistant: <response>"``.
    """
    messages = [*message_dicts(prompt_messages), {"role": "assistant", "content": response}]
    if not has_chat_template(tokenizer):
        return _render_plain_text(messages, add_generation_prompt=False)
    text, [(_, end)] = assistant_char_spans(tokenizer, messages, [len(messages) - 1])
    return text[:end]


def render_prompt(tokenizer: Any, prompt_messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """The prompt as the policy sees it before answering (chat template, or ``"User: ...\\n\\nAssistant:"``)."""
    messages = message_dicts(prompt_messages)
    if not has_chat_template(tokenizer):
        return _render_plain_text(messages, add_generation_prompt)
    return _render(tokenizer, messages, add_generation_prompt)
