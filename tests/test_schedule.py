import math

import pytest

from smollm.schedule import lr_factor
from smollm.train_config import ScheduleSection


def test_warmup_is_linear_to_the_peak():
    s = ScheduleSection(kind="wsd", warmup_steps=10)
    assert [lr_factor(i, 100, s) for i in range(10)] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lr_factor(10, 100, s) == 1.0


@pytest.mark.parametrize("shape, mid", [("linear", 0.5), ("1-sqrt", 1 - math.sqrt(0.5)), ("cosine", 0.5)])
def test_wsd_holds_the_peak_then_decays_to_the_floor(shape, mid):
    s = ScheduleSection(kind="wsd", warmup_steps=10, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.1)
    assert all(lr_factor(i, 100, s) == 1.0 for i in range(10, 80))  # stable phase
    assert lr_factor(99, 100, s) == pytest.approx(0.1)  # the last step at the floor
    assert lr_factor(89, 100, s) == pytest.approx(0.1 + 0.9 * (1 - (1 - mid)))  # halfway down
    decay = [lr_factor(i, 100, s) for i in range(80, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_cosine():
    s = ScheduleSection(kind="cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert lr_factor(0, 101, s) == 1.0 and lr_factor(100, 101, s) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(50, 101, s) == pytest.approx(0.5)
