"""The evaluation stage: generations, rewards, refusals, KL, the report and its plots.

The package is the stage: ``CONFIG_TYPES`` and ``evaluate`` are its entry points.
"""

from alignment.evaluate.stage import CONFIG_TYPES, evaluate

__all__ = ["CONFIG_TYPES", "evaluate"]
