"""Gymnasium ids as users give them: `module:EnvId` (their own env, registered on import), Discrete(n, start=s)
action spaces, misspelt ids, repeated ids and ids whose gymnasium.make fails."""

from __future__ import annotations

import re
import sys

import gymnasium as gym
import pytest
import torch

from mtdqn.envs import GymVecEnv, check_gym_id, task_specs
from tests.helpers import custom_envs

OWN = f"tests.helpers.custom_envs:{custom_envs.ENV_ID}"


def test_a_discrete_space_with_a_start_gets_the_agents_actions_shifted_by_it():
    """The agent's actions are 0..n-1; Discrete(3, start=1) takes 1..3 (action 0 failed the env's assertion)."""
    env = GymVecEnv(OWN, num_envs=3)
    assert env.n_actions == 3 and env.action_start == 1
    env.reset(seed=0)
    res = env.step(torch.tensor([0, 1, 2]))  # the env's 1, 2, 3
    assert res.reward.tolist() == [0.0, 1.0, 0.0]  # reward 1 for the env's action 2 = the agent's 1
    env.close()


def test_a_module_id_imports_its_module_and_names_the_task_without_it(monkeypatch):
    """`module:EnvId` (gymnasium.make's syntax) imports the module, which registers EnvId; metrics, reports and file
    names use 'EnvId'."""
    monkeypatch.delitem(sys.modules, "tests.helpers.custom_envs")  # as in a fresh process: not yet registered
    monkeypatch.delitem(gym.registry, custom_envs.ENV_ID)
    spec = check_gym_id(OWN)
    assert (spec.name, spec.obs_dim, spec.n_actions) == ("OffsetActions-v0", 2, 3)
    assert custom_envs.ENV_ID in gym.registry


@pytest.mark.parametrize(("task", "match"), [
    ("no_such_module_xyz:MyEnv-v0", "task_set.tasks: 'no_such_module_xyz:MyEnv-v0': module 'no_such_module_xyz' "
                                    "cannot be imported (ModuleNotFoundError"),
    ("tests.helpers.custom_envs:Nope-v0", "module 'tests.helpers.custom_envs' was imported but 'Nope-v0' is not a "
                                          "registered gymnasium id"),
    (":CartPole-v1", "expected <id> or <module>:<id>"),
    ("CartPol-v1", "(did you mean 'CartPole-v1'"),  # a misspelling, not only another version of the same name
    ("NoSuchEnv-v0", "your own environments the module that registers them (<module>:<id>"),
])
def test_a_bad_id_is_refused_with_what_to_do(task, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        check_gym_id(task)


@pytest.mark.parametrize("tasks", [["CartPole-v1", "CartPole-v1"], [OWN, custom_envs.ENV_ID]])
def test_a_task_listed_twice_is_refused(tasks):
    """Their metrics (eval/<task>/...) would collide: one head's numbers overwrote the other's."""
    with pytest.raises(ValueError, match=re.escape("names the same task more than once")) as err:
        task_specs("gym", tasks)
    assert str(err.value).startswith("task_set.tasks=")


def test_a_keyword_the_env_does_not_take_names_env_kwargs():
    with pytest.raises(ValueError, match=re.escape("task_set.env_kwargs={'foo': 1}: gymnasium.make('CartPole-v1', "
                                                   "...) failed: TypeError: ")):
        check_gym_id("CartPole-v1", {"foo": 1})


def test_an_env_whose_package_is_missing_names_the_task_and_the_install(monkeypatch):
    """gymnasium's DependencyNotInstalled (LunarLander without Box2D) as one line naming task_set.tasks."""
    for name in [m for m in sys.modules if m == "Box2D" or m.startswith("gymnasium.envs.box2d")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "Box2D", None)  # as if not installed
    with pytest.raises(ValueError, match=r"^task_set\.tasks: 'LunarLander-v3' needs a package that is not "
                                         r"installed: .*pip install"):
        check_gym_id("LunarLander-v3")
