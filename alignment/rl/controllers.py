"""Controllers that move a coefficient between PPO updates: the KL coefficient beta and the Lagrange multiplier."""

from __future__ import annotations

import math


class FixedKLController:
    """Constant KL coefficient beta (TRL's default is 0.05)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No-op; returns beta. Same signature as :meth:`AdaptiveKLController.update`."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 (arXiv:1909.08593, sec. 2.2).

    ``e = clip(KL / target - 1, -0.2, 0.2)``, ``beta <- beta (1 + e n / horizon)``, where KL is the mean per-sequence
    (summed over tokens) KL of the batch and ``n`` the number of samples (or steps) it covers. N-impl: init 0.15, target 6,
    horizon 10000.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move beta toward keeping KL at ``target``; returns the new beta."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])


class LagrangeMultiplier:
    """Lagrange multiplier lambda >= 0 for PPO-Lagrangian (Safe RLHF, Dai et al. 2023, arXiv:2310.12773, eq. 10-11).

    Safe RLHF solves ``min_theta max_{lambda>=0} -J_R(theta) + lambda (J_C(theta) - d)`` and keeps ``log lambda`` as the
    free parameter so lambda stays positive. The dual step here is ``log lambda <- log lambda + lr (J_C - d)``
    (multiplicative weights: lambda grows or shrinks by the factor ``exp(lr (J_C - d))``). The plain gradient with
    respect to ``log lambda`` is ``lambda (J_C - d)``; Safe RLHF tames it with Adam, and plain SGD on it feeds lambda
    back into its own step and blows up: a cost held 0.5 above the threshold took lambda from 1 to 3e113 in 14 updates
    at lr 0.1. Dividing by lambda keeps the step bounded and hand-checkable. ``max_value`` caps lambda.
    """

    def __init__(
        self, init: float = 1.0, lr: float = 0.1, threshold: float = 0.0, max_value: float | None = None
    ) -> None:
        if init <= 0:
            raise ValueError(f"init must be > 0 (lambda is stored as log lambda), got {init}")
        if max_value is not None and max_value < init:
            raise ValueError(f"max_value ({max_value}) must be >= init ({init})")
        self.log_lambda = math.log(init)
        self.lr = float(lr)
        self.threshold = float(threshold)
        self.max_value = None if max_value is None else float(max_value)

    @property
    def value(self) -> float:
        """Current lambda."""
        return math.exp(self.log_lambda)

    def update(self, mean_cost: float) -> float:
        """One dual ascent step from the batch mean cost J_C; returns the new lambda."""
        self.log_lambda += self.lr * (float(mean_cost) - self.threshold)
        if self.max_value is not None:
            self.log_lambda = min(self.log_lambda, math.log(self.max_value))
        return self.value

    def state_dict(self) -> dict[str, float | None]:
        return {"log_lambda": self.log_lambda, "lr": self.lr, "threshold": self.threshold, "max_value": self.max_value}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.log_lambda = float(state["log_lambda"])  # type: ignore[arg-type]
        self.lr = float(state["lr"])  # type: ignore[arg-type]
        self.threshold = float(state["threshold"])  # type: ignore[arg-type]
        self.max_value = None if state["max_value"] is None else float(state["max_value"])  # type: ignore[arg-type]
