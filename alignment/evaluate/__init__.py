"""The evaluation stage: generations, rewards, refusals, KL, the report and its plots.

The package is the stage: ``CONFIG_TYPES``, ``evaluate`` and ``main`` are its entry points.
"""

from alignment.evaluate.stage import CONFIG_TYPES, evaluate, main, summary_text

__all__ = ["CONFIG_TYPES", "evaluate", "main", "summary_text"]
