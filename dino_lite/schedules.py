"""Per-iteration schedules: one array with a value for every training step, as in the DINO code.

Precomputing the whole curve makes the schedule easy to plot, test at its endpoints and resume:
step ``i`` simply reads ``schedule[i]``.
"""

import numpy as np


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``base``, then a cosine from ``base`` to ``final``.

    The returned array has exactly ``total_steps`` entries; the last one equals ``final``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)
    warmup = np.linspace(warmup_start, base, warmup_steps, endpoint=False)
    n = total_steps - warmup_steps
    t = np.arange(n) / max(n - 1, 1)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t))
    return np.concatenate([warmup, cosine])


def teacher_temperature_schedule(warmup_temp: float, temp: float, total_steps: int,
                                 warmup_steps: int) -> np.ndarray:
    """Teacher temperature: linear from ``warmup_temp`` to ``temp`` over the warm-up, then constant."""
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)
    return np.concatenate([np.linspace(warmup_temp, temp, warmup_steps),
                           np.full(total_steps - warmup_steps, temp)])
