"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations


def interrupt_after(n_steps: int) -> type:
    """A stand-in for ``GracefulInterrupt`` whose flag turns on at the n-th check (loops check once per step)."""

    class InterruptAfter:
        calls = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        @property
        def requested(self) -> bool:
            type(self).calls += 1
            return type(self).calls >= n_steps

    return InterruptAfter
