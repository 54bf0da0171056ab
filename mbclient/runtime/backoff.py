"""Exponential backoff with jitter, one instance per device (and per serial port).

Why: a sleeping inverter answers nothing for hours. Polling it at the normal rate fills the
bus with timeouts (each costs the other units their slot) and, in the fork this project
replaces, leaked memory in the serial stack on every timed-out read. Backing off to one
probe per minute keeps both costs negligible, and the jitter keeps several sleeping
devices from probing in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays ``base, 2*base, 4*base, ...`` capped at ``cap``, each spread by ``±jitter``.

    ``next()`` returns the delay to wait after one more consecutive failure; ``reset()``
    after a success. ``failures`` counts the consecutive failures seen so far.
    """

    base: float = 1.0
    cap: float = 60.0
    jitter: float = 0.1  # fraction of the delay, uniformly spread both ways
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError(f"bad backoff {self.base}..{self.cap}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter {self.jitter} outside 0..1")

    def peek(self) -> float:
        """The un-jittered delay ``next()`` would be based on (for logging)."""
        # Cap the exponent first: 2**failures must not grow without bound over a long night.
        exponent = min(self.failures, 62)
        return min(self.cap, self.base * (2.0**exponent))

    def next(self) -> float:
        delay = self.peek()
        self.failures += 1
        if self.jitter:
            delay *= 1.0 + self.rng.uniform(-self.jitter, self.jitter)
        return min(delay, self.cap * (1.0 + self.jitter))

    def reset(self) -> None:
        self.failures = 0
