"""The PPO stage: one base carrying policy, reference, critic and reward adapters.

The package is the stage: ``CONFIG_TYPES``, ``train`` and ``main`` are its entry points, as in ``alignment.sft``.
"""

from alignment.ppo.stage import CONFIG_TYPES, main, summary_text, train

__all__ = ["CONFIG_TYPES", "main", "summary_text", "train"]
