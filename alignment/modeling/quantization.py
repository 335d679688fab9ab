"""bitsandbytes 8-bit and 4-bit settings for the loader."""

from __future__ import annotations

import logging

import torch
from transformers import BitsAndBytesConfig

from alignment.core.config import QuantConfig
from alignment.core.precision import resolve_dtype


def bnb_config(quant_cfg: QuantConfig, skip_modules: list[str] | None = None) -> BitsAndBytesConfig | None:
    """bitsandbytes settings from ``quant_cfg``, or None when the weights stay unquantized."""
    if quant_cfg.load_in_8bit and quant_cfg.load_in_4bit:
        raise ValueError("load_in_8bit and load_in_4bit are both set: choose one")
    if not (quant_cfg.load_in_8bit or quant_cfg.load_in_4bit):
        return None
    if quant_cfg.bnb_4bit_quant_type not in ("nf4", "fp4"):
        raise ValueError(f"bnb_4bit_quant_type: expected nf4 or fp4, got {quant_cfg.bnb_4bit_quant_type!r}")
    if quant_cfg.load_in_8bit:
        _log_bnb_cast_warning_once()
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_cfg.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=quant_cfg.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(quant_cfg.bnb_4bit_compute_dtype, torch.device("cpu")),
        llm_int8_skip_modules=skip_modules,
    )


class _OnceFilter(logging.Filter):
    """bitsandbytes logs "inputs will be cast ... to float16" on every int8 matmul: keep the first."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _log_bnb_cast_warning_once() -> None:
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _OnceFilter) for f in bnb_logger.filters):
        bnb_logger.addFilter(_OnceFilter())
