"""Which driving transitions may be reused across tasks (multi-task data sharing, `data.share_fraction`).

All driving tasks run the same ego dynamics and the same per-step reward on the same roads; a task only adds
hazards (pedestrians, traffic lights) that show up in their own observation features and end episodes with their
own penalties. So a transition collected on task A is a valid transition of task B once the features B never
observes are cleared, unless it ends the episode for a cause B does not have (a collision is no event in
lane_keep). tests/unit/test_data_sharing.py steps the tasks side by side from one seed and checks exactly this.
"""

from __future__ import annotations

from mtdqn.envs.driving.config import TASK_FEATURES, TASKS
from mtdqn.envs.driving.hazards import STOP_NAMES
from mtdqn.envs.driving.sim import OBS_NAMES
from mtdqn.types import ShareRule


def _hazards(task: str) -> set[str]:
    peds, lights, _ = TASK_FEATURES[task]
    return {name for name, on in (("ped", peds), ("light", lights)) if on}


def share_rule(source: str, target: str, stop_feature: bool = False) -> ShareRule | None:
    """The rule that turns a `source` transition into a `target` sample (see the module docstring).

    With `stop_feature` (DrivingConfig) the stop point is kept where every hazard of the source is one the target
    observes, and cleared where none is (it can then only have come from hazards the target never sees); a source
    with hazards on both sides of that line (urban into pedestrian or traffic_light) has no valid rule (None: the
    target draws its shared samples from the other tasks only).
    """
    for task in (source, target):
        if task not in TASKS:
            raise ValueError(f"{task!r} is not a driving task; choose from {list(TASKS)}")
    seen, has = _hazards(target), _hazards(source)
    mask = tuple(0.0 if (n.startswith("ped") and "ped" not in seen) or (n.startswith("light") and "light" not in seen)
                 else 1.0 for n in OBS_NAMES)  # fmt: skip
    if stop_feature:
        if has & seen and not has <= seen:
            return None
        mask += (1.0 if has <= seen else 0.0,) * len(STOP_NAMES)
    return ShareRule(obs_mask=mask, terminal_ok=has <= seen)
