"""Multi-task data sharing on the driving suite: the relabeling rules are checked against the simulator itself."""

import itertools

import pytest
import torch

from mtdqn.envs import share_rules
from mtdqn.envs.driving import TASKS, DrivingConfig, DrivingVecEnv, reference_policy, share_rule
from mtdqn.envs.driving.sim import OBS_NAMES


def test_rules_clear_the_features_a_task_never_observes_and_keep_its_own():
    ped = [n.startswith("ped") for n in OBS_NAMES]
    light = [n.startswith("light") for n in OBS_NAMES]
    r = share_rule("pedestrian", "lane_keep")
    assert [m == 0.0 for m in r.obs_mask] == [p or q for p, q in zip(ped, light, strict=True)]
    assert not r.terminal_ok  # a collision ends a pedestrian episode; lane_keep has no such event
    r = share_rule("urban", "traffic_light")
    assert [m == 0.0 for m in r.obs_mask] == ped and not r.terminal_ok
    r = share_rule("lane_keep", "urban")
    assert all(m == 1.0 for m in r.obs_mask) and r.terminal_ok  # lane_keep ends episodes only offroad
    assert share_rule("traffic_light", "urban").terminal_ok and not share_rule("traffic_light", "pedestrian").terminal_ok
    rules = share_rules("driving", ["lane_keep", "pedestrian"])
    assert rules[0][0] is None and rules[1][1] is None and rules[1][0] == share_rule("pedestrian", "lane_keep")


def test_stop_feature_rules_keep_the_stop_point_only_where_it_comes_from_hazards_the_target_sees():
    assert share_rule("pedestrian", "urban", True).obs_mask[-2:] == (1.0, 1.0)
    assert share_rule("lane_keep", "traffic_light", True).obs_mask[-2:] == (1.0, 1.0)  # always 0 in lane_keep
    assert share_rule("pedestrian", "traffic_light", True).obs_mask[-2:] == (0.0, 0.0)  # a pedestrian's stop
    assert share_rule("urban", "lane_keep", True).obs_mask[-2:] == (0.0, 0.0)
    assert share_rule("urban", "pedestrian", True) is None  # could be the light's or the pedestrian's
    assert share_rule("pedestrian", "traffic_light", False).obs_mask == share_rule("pedestrian", "traffic_light").obs_mask
    rules = share_rules("driving", ["urban", "pedestrian", "lane_keep"], {"stop_feature": True})
    assert rules[0][1] is None and rules[0][2] is not None and len(rules[1][0].obs_mask) == len(OBS_NAMES) + 2


@pytest.mark.parametrize("stop_feature", [False, True])
def test_a_relabeled_transition_is_what_the_target_task_would_produce(stop_feature):
    """Every pair of driving tasks, stepped from one seed with the same actions: wherever neither episode has
    ended and the target shows no hazard the source lacks, the source's observation masked by the rule equals the
    target's observation and the rewards are equal; so a shared sample is a real transition of the target (with
    the stop point too, for every pair that has a rule)."""
    n, steps = 8, 300
    envs = {t: DrivingVecEnv(t, n, config=DrivingConfig(stop_feature=stop_feature)) for t in TASKS}
    obs = {t: e.reset(seed=11) for t, e in envs.items()}
    alive = {t: torch.ones(n, dtype=torch.bool) for t in TASKS}
    drive = reference_policy("urban")  # slows for hazards where they exist, so episodes run long
    compared = {p: 0 for p in itertools.permutations(TASKS, 2) if share_rule(*p, stop_feature) is not None}
    assert len(compared) == (10 if stop_feature else 12)  # urban -> pedestrian / traffic_light have none with it
    for _ in range(steps):
        actions = drive(obs["urban"])
        out = {t: e.step(actions) for t, e in envs.items()}
        for a, b in compared:
            mask = torch.tensor(share_rule(a, b, stop_feature).obs_mask)
            extra = (mask == 1) & (torch.tensor(share_rule(b, a).obs_mask + (1.0,) * (len(mask) - len(OBS_NAMES)))
                                   == 0)  # seen by b only (hazard slots)
            ok = alive[a] & alive[b] & ~(out[a].terminated | out[a].truncated | out[b].terminated | out[b].truncated)
            ok &= (out[b].next_obs[:, extra] == 0).all(-1)
            if ok.any():
                torch.testing.assert_close(out[a].next_obs[ok] * mask, out[b].next_obs[ok], rtol=0, atol=1e-6)
                torch.testing.assert_close(out[a].reward[ok], out[b].reward[ok], rtol=0, atol=1e-6)
                compared[(a, b)] += int(ok.sum())
        for t in TASKS:
            alive[t] &= ~(out[t].terminated | out[t].truncated)
        obs = {t: r.obs for t, r in out.items()}
    assert min(compared.values()) > 200, compared  # every pair was compared on many transitions


@pytest.mark.parametrize(("kwargs", "randomize", "match"), [
    ({}, None, "task_set.kind='gym'"),
    ({"obs_noise": 0.1}, None, "noise-free"),
    ({}, {"obs_noise": [0.0, 0.1]}, "domain_randomization.obs_noise"),
])
def test_sharing_is_refused_where_no_rule_holds(kwargs, randomize, match):
    kind = "gym" if match.startswith("task_set") else "driving"
    tasks = ["CartPole-v1", "Acrobot-v1"] if kind == "gym" else ["lane_keep", "pedestrian"]
    with pytest.raises(ValueError, match=match):
        share_rules(kind, tasks, kwargs, randomize)
