"""schedules.py: the cosine schedule at its endpoints and through its warm-up."""

import numpy as np
import pytest

from dino_lite.schedules import cosine_schedule, teacher_temperature_schedule


def test_cosine_schedule_endpoints_and_warmup():
    s = cosine_schedule(1.0, 0.1, total_steps=100, warmup_steps=10)
    assert len(s) == 100
    assert s[0] == 0.0
    assert s[10] == pytest.approx(1.0)                 # warm-up ends at the base value
    assert s[-1] == pytest.approx(0.1)                 # cosine ends at the final value
    assert np.all(np.diff(s[:11]) > 0) and np.all(np.diff(s[10:]) <= 1e-12)


def test_teacher_temperature_warms_up_linearly_then_stays():
    t = teacher_temperature_schedule(0.04, 0.07, total_steps=10, warmup_steps=4)
    assert np.allclose(t, [0.04, 0.05, 0.06, 0.07, 0.07, 0.07, 0.07, 0.07, 0.07, 0.07])
