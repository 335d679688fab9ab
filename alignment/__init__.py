"""alignment: an InstructGPT-style RLHF pipeline (SFT, reward model, PPO, evaluation); see README.md."""

import logging


class _KernelFetchNote(logging.Filter):
    """bitsandbytes tries to download an optional CPU 4-bit kernel from the Hub when it is imported on a CPU with
    AVX512-BF16, and warns about "trust_remote_code" when it cannot: alarming, and nothing to act on. The note is
    kept, reworded, at INFO level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Failed to load CPU gemm_4bit_forward"):
            record.msg, record.args = (
                "bitsandbytes: its optional downloadable CPU 4-bit kernel is not available; 4-bit layers use the "
                "built-in CPU code (slower, same results)",
                (),
            )
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_KernelFetchNote())
