"""OpenAssistant (oasst1) message trees: one tree per row, ``{"message_tree_id", "prompt": <root node>}``.

Every node has ``message_id, text, role (prompter | assistant), rank, synthetic, replies[]``. People
ranked the assistant replies to each prompter turn (rank 0 best; Köpf et al. 2023, "OpenAssistant
Conversations"). From a tree:

- ``comparison``: one record per prompter node with >= 2 ranked assistant replies, holding all K
  replies and their ranks (a K-ranked group, as in InstructGPT sec. 3.5); the prompt is the
  conversation path from the root down to that prompter turn;
- ``demonstration``: the path down to each rank-0 (best) reply;
- ``prompt``: the root prompt.

Synthetic (model-written) and deleted nodes are dropped with their whole subtree: a conversation
continued from model text is not human data. The Hub export (``OpenAssistant/oasst1``) is flat,
one message per row; :func:`build_trees` nests it into the same trees first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

from data_schemas.errors import RecordError
from data_schemas.openai_messages import require, require_text, validated
from data_schemas.records import Comparison, Demonstration, Message, Prompt, Record

ROLES = {"prompter": "user", "assistant": "assistant"}


def _read_node(node: Any, field: str) -> tuple[str, str, list]:
    """(role, text, replies) of one node, with errors naming the node's path in the tree."""
    try:
        role = require_text(node, "role")
        text = require_text(node, "text")
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise RecordError(f"expected list, got {type(replies).__name__}", field="replies", kind="mistyped_field")
    except RecordError as e:
        inner = f".{e.field}" if e.field else ""
        raise RecordError(e.reason, field=f"{field}{inner}", kind=e.kind) from None
    if role not in ROLES:
        raise RecordError(f"unknown role {role!r} (known: prompter, assistant)", field=f"{field}.role", kind="bad_role")
    return ROLES[role], text, replies


def _is_human(node: Mapping[str, Any]) -> bool:
    return not node.get("synthetic") and not node.get("deleted")


def _walk(
    node: Mapping[str, Any], field: str, path: tuple[Message, ...], fields: tuple[str, ...]
) -> Iterator[tuple[Mapping[str, Any], tuple[Message, ...], tuple[str, ...], list[tuple[str, Mapping[str, Any]]]]]:
    """Depth-first: (node, path down to it, each path node's field, its human replies with their fields).

    Model-written and deleted replies are left out with their subtrees.
    """
    role, text, replies = _read_node(node, field)
    path, fields = (*path, Message(role, text)), (*fields, field)
    kept = [(f"{field}.replies[{i}]", r) for i, r in enumerate(replies) if isinstance(r, Mapping) and _is_human(r)]
    yield node, path, fields, kept
    for reply_field, reply in kept:
        yield from _walk(reply, reply_field, path, fields)


def _located_in_tree(error: RecordError, fields: tuple[str, ...], reply_fields: list[str]) -> RecordError:
    """Point a ``validate()`` error (``prompt[2].content``, ``responses[1]``) at the tree node it came from."""
    name, _, rest = (error.field or "").partition("[")
    index, _, _ = rest.partition("]")
    if index.isdigit():
        nodes = reply_fields if name == "responses" else fields
        if int(index) < len(nodes):
            return RecordError(error.reason, field=f"{nodes[int(index)]}.text", kind=error.kind)
    return RecordError(error.reason, field=fields[-1], kind=error.kind)


def _rank(reply: Mapping[str, Any], field: str) -> int:
    rank = reply["rank"]
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise RecordError(f"expected int, got {type(rank).__name__}", field=f"{field}.rank", kind="mistyped_field")
    return rank


def _group_record(
    kind: str, node: Mapping[str, Any], path: tuple[Message, ...], ranked: list[tuple[str, Mapping[str, Any]]]
) -> Record:
    """The K-ranked Comparison under one prompter node, or the Demonstration ending in its best reply."""
    ranks = tuple(_rank(reply, field) for field, reply in ranked)
    texts = tuple(_read_node(reply, field)[1] for field, reply in ranked)
    if kind == "comparison":
        return Comparison(path, texts, ranks, source_id=node.get("message_id"))
    best = ranks.index(min(ranks))
    return Demonstration((*path, Message("assistant", texts[best])), source_id=ranked[best][1].get("message_id"))


def oasst_tree_records(row: Mapping[str, Any], kind: str) -> list[Record]:
    """All records of one kind that a message tree holds (see the module docstring)."""
    root = require(row, "prompt", Mapping)
    if not _is_human(root):
        return []
    if kind == "prompt":
        _, text, _ = _read_node(root, "prompt")
        return [
            validated(
                Prompt((Message("user", text),), source_id=root.get("message_id")), {"messages[0]": "prompt.text"}
            )
        ]
    records: list[Record] = []
    for node, path, fields, replies in _walk(root, "prompt", (), ()):
        ranked = [(f, r) for f, r in replies if r.get("role") == "assistant" and r.get("rank") is not None]
        if path[-1].role != "user" or len(ranked) < 2:
            continue
        record = _group_record(kind, node, path, ranked)
        try:
            records.append(record.validate())
        except RecordError as e:
            reply_fields = [f for f, _ in ranked]
            best_field = [f for f, r in ranked if r.get("message_id") == record.source_id][:1]
            chat_fields = (*fields, *best_field) if kind == "demonstration" else fields
            raise _located_in_tree(e, chat_fields, reply_fields) from None
    return records


def build_trees(messages: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Nest flat oasst1 rows (``message_id``, ``parent_id``, ``message_tree_id``, ...) into tree rows.

    Rows keep their order inside each tree; a tree whose root row is missing is dropped (the Hub
    splits cut some trees).
    """
    nodes: dict[str, dict[str, Any]] = {}
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    roots: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        try:
            message_id = require_text(message, "message_id")
        except RecordError as e:
            raise e.located(index=i) from None
        node = {**message, "replies": []}
        nodes[message_id] = node
        parent = message.get("parent_id")
        if parent is not None and not isinstance(parent, str):
            raise RecordError(
                f"expected a message id or null, got {type(parent).__name__}", field="parent_id", kind="mistyped_field"
            ).located(index=i)
        (children[parent] if parent else roots).append(node)
    for parent_id, kids in children.items():
        if parent_id in nodes:
            nodes[parent_id]["replies"].extend(kids)
    return [{"message_tree_id": root.get("message_tree_id", root["message_id"]), "prompt": root} for root in roots]
