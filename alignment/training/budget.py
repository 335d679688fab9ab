"""A wall-clock budget for a training stage: the equal-compute rule for comparing methods.

Comparing PPO, GRPO and DPO "at equal compute" on one host means giving each method's own training the same
minutes. ``max_train_minutes`` counts training compute only: rollouts and updates for RL (their reference passes
included), forward and backward for SFT and reward, and for DPO its steps plus the reference pass it takes once
before them (``train_loop``'s ``budget_spent_before``); not model loading or the evaluations before and after, so
the figure is the same kind of time for every method. The seconds spent travel in each checkpoint, so a resumed run
spends what is left, not a fresh budget.

A budget makes the number of steps depend on the machine's speed: two runs of one recipe on different hosts
stop at different steps. The learning-rate schedule is still planned over ``max_steps`` (or the epochs); set those
high enough that the budget binds, and read the steps taken from the stage's metrics (``budget_stopped``).
"""

from __future__ import annotations

from alignment.core.run import Run
from alignment.training.batching import reduce_sum


class TrainingBudget:
    """Seconds of training allowed and spent; every process stops at the same step."""

    def __init__(self, minutes: float, spent_seconds: float = 0.0) -> None:
        self.limit_seconds = minutes * 60.0 if minutes > 0 else None
        self.spent_seconds = spent_seconds
        self.stopped = False

    def spend(self, seconds: float) -> None:
        self.spent_seconds += seconds

    def exhausted(self, run: Run) -> bool:
        """True once the budget is spent on any process (all-reduced, so every rank leaves the loop together)."""
        if self.limit_seconds is None:
            return False
        self.stopped = reduce_sum(run, [float(self.spent_seconds >= self.limit_seconds)])[0] > 0
        return self.stopped

    def state(self) -> dict[str, float]:
        """What a checkpoint keeps so that resume spends only the rest."""
        return {"budget_seconds_spent": self.spent_seconds}

    def summary(self) -> dict[str, float | bool]:
        """The stage's metrics: whether the budget ended training, and the training seconds it counted."""
        if self.limit_seconds is None:
            return {}
        return {"budget_stopped": self.stopped, "budget_seconds_spent": self.spent_seconds}
