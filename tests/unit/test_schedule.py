"""Learning-rate schedules over env-step progress."""

import math

import pytest

from mtdqn.models.schedule import LRSchedule


def test_factors_at_hand_computed_points():
    assert LRSchedule("none").factor(0.7) == 1.0
    lin = LRSchedule("linear", final_fraction=0.1)
    assert lin.factor(0.0) == 1.0 and lin.factor(1.0) == pytest.approx(0.1) and lin.factor(0.5) == pytest.approx(0.55)
    cos = LRSchedule("cosine", final_fraction=0.0)
    assert cos.factor(0.5) == pytest.approx(0.5) and cos.factor(1.0) == pytest.approx(0.0)
    assert cos.factor(0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    warm = LRSchedule("linear", final_fraction=0.0, warmup_fraction=0.2)
    assert warm.factor(0.1) == pytest.approx(0.5) and warm.factor(0.2) == pytest.approx(1.0)
    assert warm.factor(0.6) == pytest.approx(0.5)


def test_progress_past_the_budget_is_clamped():
    """A run that collects past data.total_env_steps (progress > 1) keeps the final lr: unclamped, linear decay to
    0 went negative (a negative lr ascends the loss)."""
    assert LRSchedule("linear", final_fraction=0.0).factor(1.2) == pytest.approx(0.0, abs=1e-12)
    assert LRSchedule("linear", final_fraction=0.1).factor(1.2) == pytest.approx(0.1)
    assert LRSchedule("cosine", final_fraction=0.1).factor(1.5) == pytest.approx(0.1)
    assert LRSchedule("linear", final_fraction=0.1, warmup_fraction=0.2).factor(-0.5) == 0.0


def test_constant_schedule_honours_its_warmup():
    """scheduler=none exposes warmup_fraction (conf/scheduler/none.yaml): a linear warm-up, then constant."""
    flat = LRSchedule("none", final_fraction=1.0, warmup_fraction=0.2)
    assert flat.factor(0.0) == 0.0 and flat.factor(0.1) == pytest.approx(0.5)
    assert flat.factor(0.2) == 1.0 and flat.factor(0.9) == 1.0


@pytest.mark.parametrize(("kwargs", "match"), [({"kind": "step"}, "scheduler.kind"),
                                               ({"final_fraction": 2.0}, "final_fraction")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRSchedule(**kwargs)
