"""Multi-task DQN end to end: batch composition, driving task set, heterogeneous spaces, PCGrad."""

import json

import pytest
import torch

from mtdqn.data.multitask import batch_counts
from mtdqn.train import build, train
from tests.helpers.config import compose_cfg

MTL = ["debug=smoke", "logger=jsonl", "callbacks.progress=null", "model=mtdqn", "net=multihead",
       "net.hidden=[32,32]", "data.num_envs=2"]


def set_up(built: tuple) -> tuple:
    """build()'s (model, data, trainer) with the data module attached and set up, as trainer.fit would (no env step)."""
    model, data, trainer = built
    data.trainer = trainer
    trainer.strategy._lightning_module = model
    data.setup()
    return model, data, trainer


def test_batch_counts_split_exactly():
    assert batch_counts(12, [1, 1, 1]) == [4, 4, 4]
    assert batch_counts(10, [1, 1, 1]) == [4, 3, 3]
    assert batch_counts(8, [2, 1, 1]) == [4, 2, 2]
    assert batch_counts(8, [0, 1, 1]) == [0, 4, 4]
    with pytest.raises(ValueError):
        batch_counts(8, [0, 0])


@pytest.mark.parametrize(("composition", "weights", "unit", "expected"),
                         [("uniform", None, "total", [10, 10, 10]), ("weighted", [3, 1, 1], "total", [18, 6, 6]),
                          ("uniform", None, "per_task", [30, 30, 30]),
                          ("weighted", [3, 1, 1], "per_task", [54, 18, 18])])
def test_round_batches_are_composed_per_task_as_configured(tmp_path, composition, weights, unit, expected):
    """data.batch_size is split across tasks (batch_size_unit=total) or drawn per task (per_task: batch_size x
    tasks in all, split by the same composition)."""
    extra = [f"data.batch_composition={composition}", f"data.batch_size_unit={unit}"]
    if weights:
        extra.append(f"data.task_weights=[{','.join(map(str, weights))}]")
    cfg = compose_cfg([*MTL, "task_set=driving", "data.batch_size=30", "data.learning_starts=100", *extra],
                      tmp_path)
    model, data, trainer = set_up(build(cfg))
    round_ = next(iter(data.train_dataloader()))
    counts = torch.bincount(round_.batch.task_ids[0], minlength=3).tolist()
    assert counts == expected
    assert round_.batch.obs.shape[1] == sum(expected)


@pytest.mark.parametrize(("weights", "expected"), [(None, [4, 4, 4]), ([1, 2, 3], [2, 4, 6])])
def test_rounds_collect_per_task_as_configured(tmp_path, weights, expected):
    """data.collect_weights splits each round's vector steps across tasks; each task's replay grows by its share."""
    extra = [] if weights is None else [f"data.collect_weights=[{','.join(map(str, weights))}]"]
    cfg = compose_cfg([*MTL, "task_set=driving", "data.num_envs=2", "data.env_steps_per_round=24",
                       "data.learning_starts=40", "data.batch_size=30", *extra], tmp_path)
    model, data, trainer = set_up(build(cfg))
    assert data.vec_steps == expected
    data.train_dataloader().dataset.collect_round()
    assert [len(b) for b in data.buffers] == [2 * n for n in expected]  # rows x num_envs


def test_by_score_schedule_shifts_collection_away_from_solved_tasks(tmp_path):
    """data.collect_schedule=by_score: after an evaluation, a solved task collects collect_solved_scale x its
    share (at least one vector step), the unsolved ones take the rest; a task that drops back gets its share."""
    cfg = compose_cfg([*MTL, "task_set=driving", "data.num_envs=2", "data.env_steps_per_round=24",
                       "data.learning_starts=40", "data.batch_size=30", "data.collect_schedule=by_score",
                       "data.collect_solved_scale=0.5"], tmp_path)
    model, data, trainer = set_up(build(cfg))
    assert data.vec_steps == [4, 4, 4]
    shares = data.observe_scores([0.95, 0.3, 0.89])  # lane_keep solved: weights 2, 4, 4 of 12 vector steps
    assert data.vec_steps == [2, 5, 5]  # 12 x (0.2, 0.4, 0.4), largest remainder
    assert shares["data/lane_keep/collect_share"] == 2 / 12 and sum(shares.values()) == pytest.approx(1.0)
    stream = data.train_dataloader().dataset
    stream.collect_round()
    assert [len(b) for b in data.buffers] == [2 * n for n in data.vec_steps]
    data.observe_scores([0.99, 0.95, 0.97])  # all solved: the configured shares again
    assert data.vec_steps == [4, 4, 4]
    data.observe_scores([0.99, 0.95, 0.5])
    data.collect_solved_scale = 0.01  # a tiny share still collects one vector step per round
    data.observe_scores([0.99, 0.95, 0.5])
    assert data.vec_steps == [1, 1, 10]
    data.observe_scores([0.2, 0.95, 0.5])  # lane_keep dropped below the threshold: its share is back
    assert data.vec_steps == [5, 1, 6]  # lane_keep and traffic_light split 12 - 1 (the tie broken by order)
    state = data.state_dict()  # the current shares are part of a checkpoint: a resumed run keeps them
    data.observe_scores([0.2, 0.2, 0.2])
    assert data.vec_steps == [4, 4, 4]
    data.load_state_dict(state)
    assert data.vec_steps == [5, 1, 6]


def test_by_score_hysteresis_keeps_a_solved_task_solved_through_a_small_dip(tmp_path):
    """data.collect_unsolved_score: a solved task collects its reduced share until it scores below this lower
    threshold, and an unsolved one needs collect_solved_score again; the solved flags survive a checkpoint."""
    cfg = compose_cfg([*MTL, "task_set=driving", "data.num_envs=2", "data.env_steps_per_round=24",
                       "data.learning_starts=40", "data.batch_size=30", "data.collect_schedule=by_score",
                       "data.collect_solved_scale=0.5", "data.collect_unsolved_score=0.8"], tmp_path)
    model, data, trainer = set_up(build(cfg))
    data.observe_scores([0.95, 0.3, 0.3])
    assert data.vec_steps == [2, 5, 5]
    data.observe_scores([0.85, 0.3, 0.3])  # a dip above 0.8: still solved (without hysteresis [4, 4, 4])
    assert data.vec_steps == [2, 5, 5]
    state = data.state_dict()
    data.observe_scores([0.79, 0.3, 0.3])  # below 0.8: unsolved, full share back
    assert data.vec_steps == [4, 4, 4]
    data.observe_scores([0.85, 0.3, 0.3])  # once unsolved, 0.85 is not enough: it needs 0.9 again
    assert data.vec_steps == [4, 4, 4]
    data.load_state_dict(state)  # the checkpoint remembers lane_keep as solved
    data.observe_scores([0.85, 0.3, 0.3])
    assert data.vec_steps == [2, 5, 5]


def test_batch_solved_scale_shrinks_solved_tasks_share_of_each_minibatch(tmp_path):
    """data.batch_solved_scale: under by_score, a solved task's minibatch weight is multiplied by it (hysteresis
    included), and the unsolved tasks get the rest; 1 (the default) leaves composition alone."""
    cfg = compose_cfg([*MTL, "task_set=driving", "data.num_envs=2", "data.env_steps_per_round=24",
                       "data.learning_starts=40", "data.batch_size=30", "data.collect_schedule=by_score",
                       "data.batch_composition=weighted", "data.task_weights=[1,2,2]",
                       "data.batch_solved_scale=0.25", "data.collect_unsolved_score=0.8"], tmp_path)
    model, data, trainer = set_up(build(cfg))
    assert data.composition_counts() == [6, 12, 12]
    data.observe_scores([0.95, 0.3, 0.3])  # lane_keep solved: weights 0.25, 2, 2
    assert data.composition_counts() == [2, 14, 14]
    data.observe_scores([0.85, 0.95, 0.3])  # lane_keep still solved (hysteresis), pedestrian solved too
    assert data.composition_counts() == [3, 5, 22]  # 30 x (0.25, 0.5, 2) / 2.75
    round_ = next(iter(data.train_dataloader()))
    assert torch.bincount(round_.batch.task_ids[0], minlength=3).tolist() == [3, 5, 22]
    data.batch_solved_scale = 1.0
    assert data.composition_counts() == [6, 12, 12]


def test_proportional_composition_splits_each_minibatch_by_replay_size(tmp_path):
    """data.batch_composition=proportional: each task's share of a minibatch is its share of the stored
    transitions (replays of 4 / 8 / 12 give 5 / 10 / 15 of 30), not the uniform 10 / 10 / 10."""
    cfg = compose_cfg([*MTL, "task_set=driving", "data.num_envs=2", "data.env_steps_per_round=24",
                       "data.learning_starts=40", "data.batch_size=30", "data.collect_weights=[1,2,3]",
                       "data.batch_composition=proportional"], tmp_path)
    model, data, trainer = set_up(build(cfg))
    data.train_dataloader().dataset.collect_round()
    assert [len(b) for b in data.buffers] == [4, 8, 12]
    assert data.composition_counts() == [5, 10, 15]


def test_finished_episodes_are_tagged_with_the_task_they_ran_in(tmp_path):
    """A round's episode returns carry the index of the task whose collector finished them (rollout/<task>/return
    is logged from these tags): every task's episodes, in collection order, with their own returns."""
    cfg = compose_cfg([*MTL, "task_set=driving", "data.num_envs=2", "data.env_steps_per_round=72",
                       "data.learning_starts=40", "data.batch_size=30", "data.collect_weights=[1,2,3]",
                       "+task_set.env_kwargs.max_episode_steps=5"], tmp_path)
    model, data, trainer = set_up(build(cfg))
    stream = data.train_dataloader().dataset
    finished = []  # (task, returns) of every collector step that finished episodes
    for i, collector in enumerate(data.collectors):
        def step(eps, _i=i, _step=collector.step):
            transition, episodes = _step(eps)
            if episodes is not None:
                finished.append((_i, episodes.returns))
            return transition, episodes
        collector.step = step
    _, returns, tasks = stream.collect_round()  # 6 / 12 / 18 vector steps of 5-step episodes
    assert set(tasks.tolist()) == {0, 1, 2}
    assert tasks.tolist() == [i for i, r in finished for _ in range(len(r))]
    assert torch.equal(returns, torch.cat([r for _, r in finished]))


@pytest.mark.parametrize("clock", ["summed", "task"])
def test_exploration_clock_decays_epsilon_on_summed_or_own_env_steps(tmp_path, clock):
    """data.exploration_clock=task: each task's epsilon follows its own env steps (random actions until the summed
    warm-up); summed: every task's epsilon follows the env steps summed over tasks."""
    cfg = compose_cfg([*MTL, "task_set=driving", "data.num_envs=2", "data.env_steps_per_round=24",
                       "data.learning_starts=40", "data.batch_size=30", "data.collect_weights=[1,2,3]",
                       "exploration.duration=200", "exploration.start=1.0", "exploration.end=0.0",
                       f"data.exploration_clock={clock}"], tmp_path)
    model, data, trainer = set_up(build(cfg))
    stream = data.train_dataloader().dataset
    seen = []  # (task, epsilon, summed steps before the step, own steps before the step)
    for i, collector in enumerate(data.collectors):
        def step(eps, _i=i, _step=collector.step):
            seen.append((_i, eps, stream.env_steps, stream.task_env_steps[_i]))
            return _step(eps)
        collector.step = step
    logged = []  # (train/epsilon of the round, the epsilons its vector steps acted with)
    for _ in range(6):  # 144 summed env steps: 24 / 48 / 72 per task
        before = len(seen)
        logged.append((stream.collect_round()[0], [eps for _, eps, _, _ in seen[before:]]))
    assert stream.task_env_steps == [24, 48, 72]
    for round_eps, acted in logged:  # task clock: the round's mean over its vector steps; summed: the last one's
        assert round_eps == pytest.approx(sum(acted) / len(acted) if clock == "task" else acted[-1])
    assert any(len(set(acted)) > 1 for _, acted in logged)
    for _task, eps, summed, own in seen:
        steps = own if clock == "task" else summed
        expected = 1.0 if summed < 40 else 1.0 - steps / 200
        assert eps == pytest.approx(expected)
    assert any(summed >= 40 and own != summed for _, _, summed, own in seen)  # the clocks do differ here


def test_fixed_schedule_ignores_scores_and_by_score_is_wired_to_evaluation(tmp_path, monkeypatch):
    from mtdqn.data.multitask import MultiTaskDataModule

    cfg = compose_cfg([*MTL, "task_set=driving", "data.env_steps_per_round=24"], tmp_path / "fixed")
    _, data, _ = build(cfg)
    data.observe_scores([1.0, 1.0, 0.0])
    assert data.vec_steps == [4, 4, 4]
    seen = []
    original = MultiTaskDataModule.observe_scores
    monkeypatch.setattr(MultiTaskDataModule, "observe_scores",
                        lambda self, scores: seen.append(list(scores)) or original(self, scores))
    summary = train(compose_cfg([*MTL, "task_set=driving", "data.collect_schedule=by_score"], tmp_path / "by"))
    assert seen and all(len(s) == 3 and all(isinstance(x, float) for x in s) for s in seen)
    assert seen[-1] == [summary[f"eval/{t}/normalized"] for t in ("lane_keep", "pedestrian", "traffic_light")]
    assert sum(summary[f"data/{t}/collect_share"] for t in ("lane_keep", "pedestrian", "traffic_light")) == \
        pytest.approx(1.0)


def test_each_tasks_own_env_steps_are_counted_logged_and_checkpointed(tmp_path):
    tasks = ("lane_keep", "pedestrian", "traffic_light")
    cfg = compose_cfg([*MTL, "task_set=driving", "data.env_steps_per_round=24", "data.collect_weights=[1,2,3]"],
                      tmp_path / "run")
    summary = train(cfg)
    own = [summary[f"time/{t}/env_steps"] for t in tasks]  # 2 envs x 2 / 4 / 6 vector steps per round
    assert sum(own) == summary["time/env_steps"] and own[0] > 0
    assert own == [own[0], 2 * own[0], 3 * own[0]]

    model, data, trainer = set_up(build(compose_cfg([*MTL, "task_set=driving"], tmp_path / "fresh")))
    assert data.current_task_env_steps() == [0, 0, 0]
    state = data.state_dict()
    data.load_state_dict(state | {"task_env_steps": [4, 8, 12]})  # a resumed run keeps counting from these
    assert data.current_task_env_steps() == [4, 8, 12]
    data.load_state_dict({k: v for k, v in state.items() if k != "task_env_steps"})  # a checkpoint from before
    assert data.current_task_env_steps() is None


def test_each_tasks_collector_and_replay_get_their_own_seed(tmp_path):
    """Tasks are seeded apart (data.seed + 10_007 x task): one seed for all would give every task's envs the same
    reset seeds and every replay the same sampling stream."""
    model, data, trainer = set_up(build(compose_cfg([*MTL, "task_set=driving"], tmp_path)))
    seeds = [c.seed for c in data.collectors]
    assert len(set(seeds)) == 3
    assert len({b.generator.initial_seed() for b in data.buffers}) == 3
    assert len({tuple(c.generator.get_state().tolist()) for c in data.collectors}) == 3


def test_a_resumed_run_resets_its_envs_with_seeds_moved_on_by_the_env_steps_done(tmp_path):
    """After a resume the envs reset with seed + env steps collected: with the saved seeds themselves a resumed run
    would replay the first episodes of the original run."""
    model, data, trainer = set_up(build(compose_cfg([*MTL, "task_set=driving"], tmp_path)))
    seeds = [c.seed for c in data.collectors]
    data.load_state_dict(data.state_dict() | {"env_steps": 400})
    data.train_dataloader()
    assert [c.seed for c in data.collectors] == [s + 400 for s in seeds]


@pytest.mark.parametrize("override", ["data.collect_schedule=adaptive", "data.collect_solved_scale=0",
                                      "data.collect_solved_scale=1.5", "data.collect_unsolved_score=0.95",
                                      "data.exploration_clock=own", "data.batch_solved_scale=0",
                                      "data.batch_solved_scale=0.5"])
def test_bad_collect_schedule_is_refused_before_any_env_step(tmp_path, override):
    cfg = compose_cfg([*MTL, "task_set=driving", override], tmp_path)
    with pytest.raises(ValueError, match=override.split("=")[0]):
        build(cfg)


def test_bad_batch_size_unit_is_refused_before_any_env_step(tmp_path):
    with pytest.raises(ValueError, match=r"data.batch_size_unit='sum' is not one of \('total', 'per_task'\)"):
        build(compose_cfg([*MTL, "task_set=driving", "data.batch_size_unit=sum"], tmp_path / "a"))
    # per task, the warm-up must hold batch_size x tasks: 30 x 3 > 60 (30 alone would fit)
    with pytest.raises(ValueError, match=r"data.batch_size=30 x 3 tasks \(data.batch_size_unit=per_task\) is larger "
                                         "than the warm-up data.learning_starts=60"):
        build(compose_cfg([*MTL, "task_set=driving", "data.batch_size=30", "data.learning_starts=60",
                           "data.batch_size_unit=per_task"], tmp_path / "b"))


def test_by_score_needs_normalized_scores(tmp_path):
    cfg = compose_cfg([*MTL, "task_set=gym", "task_set.tasks=[CartPole-v1,Acrobot-v1]", "data.collect_schedule=by_score"],
                      tmp_path)
    with pytest.raises(ValueError, match="normalized score"):
        build(cfg)


@pytest.mark.parametrize("weights", ["[1,0,1]", "[1,1]", "[0.01,1,1]"])
def test_bad_collect_weights_are_refused_before_any_env_step(tmp_path, weights):
    cfg = compose_cfg([*MTL, "task_set=driving", "data.num_envs=2", "data.env_steps_per_round=24",
                       f"data.collect_weights={weights}"], tmp_path)
    with pytest.raises(ValueError, match="data.collect_weights"):
        build(cfg)


def test_driving_multitask_smoke_logs_per_task_metrics(tmp_path):
    summary = train(compose_cfg([*MTL, "task_set=driving", "model.grad_diagnostics_every=1"], tmp_path))
    assert summary["status"] == "completed"
    for name in ("eval/lane_keep/normalized", "eval/pedestrian/normalized", "eval/traffic_light/normalized",
                 "eval/mean_normalized", "eval/min_normalized", "eval/pedestrian/collision_rate",
                 "eval/traffic_light/red_light_rate", "eval/lane_keep/offroad_rate", "eval/lane_keep/completion_rate",
                 "eval/lane_keep/episode_length"):
        assert name in summary, name
    names = set().union(*[json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()])
    for name in ("train/lane_keep/td_loss", "train/pedestrian/q_mean", "train/grad_cos/lane_keep__pedestrian"):
        assert name in names, name


@pytest.mark.parametrize("balance", ["sum", "pcgrad"])
def test_heterogeneous_gym_task_set_trains(tmp_path, balance):
    """CartPole (4 obs, 2 actions) + Acrobot (6 obs, 3 actions) in one multi-head network."""
    cfg = compose_cfg([*MTL, "task_set=gym", "task_set.tasks=[CartPole-v1,Acrobot-v1]",
                       f"model.loss_balance={balance}"], tmp_path)
    model, data, trainer = build(cfg)
    before = torch.cat([p.detach().flatten().clone() for p in model.q_net.parameters()])
    trainer.fit(model, datamodule=data)
    after = torch.cat([p.detach().flatten() for p in model.q_net.parameters()])
    assert trainer.global_step > 0 and not torch.equal(before, after)
    assert data.buffers[0].obs.shape[-1] == 4 and data.buffers[1].obs.shape[-1] == 6
    acrobot = model.policy_for(1)(torch.zeros(5, 6))
    assert acrobot.max() < 3
    cartpole = model.policy_for(0)(torch.zeros(5, 4))
    assert cartpole.max() < 2


def test_single_task_model_refuses_a_task_set(tmp_path):
    with pytest.raises(ValueError, match="model=mtdqn"):
        build(compose_cfg(["debug=smoke", "task_set=driving"], tmp_path))


def test_popart_multitask_run_trains_logs_and_checkpoints_its_statistics(tmp_path):
    """model.popart=true: CartPole (returns ~10-100) and Acrobot (~-500) get their own target statistics."""
    cfg = compose_cfg([*MTL, "task_set=gym", "task_set.tasks=[CartPole-v1,Acrobot-v1]", "model.popart=true",
                       "model.popart_beta=0.05"], tmp_path)
    model, data, trainer = build(cfg)
    assert model.q_net.popart is not None
    trainer.fit(model, datamodule=data)
    mu, sigma = model.q_net.popart.mu, model.q_net.popart.sigma
    assert trainer.global_step > 0 and mu[0] > 0 > mu[1] and torch.all(sigma != 1.0)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    names = set().union(*rows)
    for task in ("CartPole-v1", "Acrobot-v1"):
        assert {f"train/{task}/popart_mu", f"train/{task}/popart_sigma"} <= names
    last = [r for r in rows if "train/Acrobot-v1/popart_mu" in r][-1]
    assert last["train/Acrobot-v1/popart_mu"] == pytest.approx(float(mu[1]), rel=1e-5)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(state["q_net.popart.mu"], mu) and "target_net.popart.nu" in state


def test_minatar_task_set_trains_with_per_game_adapters_and_heads(tmp_path):
    """task_set=minatar (optional extra): 10x10xC images with different C and action counts per game."""
    pytest.importorskip("minatar", reason="task_set=minatar needs the optional extra .[minatar]")
    cfg = compose_cfg([*MTL, "task_set=minatar"], tmp_path)
    model, data, trainer = build(cfg)
    assert [(t.obs_dim, t.n_actions) for t in model.tasks] == [(400, 3), (700, 3), (400, 5)]
    assert [a.in_features for a in model.q_net.adapters] == [400, 700, 400]
    before = torch.cat([p.detach().flatten().clone() for p in model.q_net.parameters()])
    trainer.fit(model, datamodule=data)
    assert trainer.global_step > 0
    assert not torch.equal(before, torch.cat([p.detach().flatten() for p in model.q_net.parameters()]))
    assert model.policy_for(0)(torch.zeros(4, 400)).max() < 3 and model.policy_for(2)(torch.zeros(4, 400)).max() < 5


def test_minatar_task_set_trains_with_per_game_conv_encoders(tmp_path):
    """net.conv on task_set=minatar: each game's 10x10xC image (C = 4, 7, 4) through its own convolution, one
    shared torso; the encoders train."""
    pytest.importorskip("minatar", reason="task_set=minatar needs the optional extra .[minatar]")
    cfg = compose_cfg([*MTL, "task_set=minatar", "net.conv=[[8,3,1]]"], tmp_path)
    model, data, trainer = build(cfg)
    assert [t.obs_shape for t in model.tasks] == [(10, 10, 4), (10, 10, 7), (10, 10, 4)]
    assert [e.image_shape for e in model.q_net.encoders] == [(4, 10, 10), (7, 10, 10), (4, 10, 10)]
    before = [e.convs[0].weight.detach().clone() for e in model.q_net.encoders]
    trainer.fit(model, datamodule=data)
    assert trainer.global_step > 0
    assert all(not torch.equal(b, e.convs[0].weight) for b, e in zip(before, model.q_net.encoders, strict=True))


def test_shared_samples_are_relabeled_for_the_task_that_samples_them(tmp_path):
    """data.share_fraction=0.5: half of a task's samples come evenly from the other tasks' replays, with the
    features the task never observes cleared, its task id, and weight 0 where the source ended the episode for a
    cause the task does not have."""
    from mtdqn.envs.driving.sim import OBS_DIM, OBS_NAMES
    from mtdqn.types import Transition

    cfg = compose_cfg([*MTL, "task_set=driving", "data.batch_size=30", "data.share_fraction=0.5"], tmp_path)
    model, data, trainer = set_up(build(cfg))
    n = data.num_envs
    for i, buf in enumerate(data.buffers):  # task i's transitions read i + 1 in every feature; odd rows terminal
        for row in range(40):
            x = torch.full((n, OBS_DIM), float(i + 1))
            buf.add(Transition(x, torch.zeros(n, dtype=torch.long), torch.ones(n), x,
                               torch.full((n,), row % 2 == 1), torch.zeros(n, dtype=torch.bool)))
    ped = torch.tensor([name.startswith("ped") for name in OBS_NAMES])
    light = torch.tensor([name.startswith("light") for name in OBS_NAMES])
    for task, hidden in ((0, ped | light), (1, light), (2, ped)):
        b = data.sample_task(task, 40, 3)
        assert b.obs.shape == (3, 40, OBS_DIM) and (b.task_ids == task).all()
        source = b.obs[..., 0].long() - 1  # the speed feature is never masked
        assert [int((source[0] == j).sum()) for j in range(3)] == [20 if j == task else 10 for j in range(3)]
        shared = source != task
        assert (b.obs[shared][:, hidden] == 0).all() and (b.next_obs[shared][:, hidden] == 0).all()
        assert (b.obs[shared][:, ~hidden] > 0).all() and (b.obs[~shared] > 0).all()
        terminal = b.discounts == 0
        assert terminal[shared].any() and (~terminal[shared]).any()
        for j in range(3):
            from_j = source == j
            ends_ok = j == task or (task, j) in ((1, 0), (2, 0))  # lane_keep's only end (offroad) exists everywhere
            expected = torch.where(terminal & ~torch.tensor(ends_ok), 0.0, 1.0)
            assert torch.equal(b.weights[from_j], expected[from_j]), (task, j)
    data.share_fractions = [0.5, 0.0, 0.25]  # one fraction per task: pedestrian's own replay only
    assert (data.sample_task(1, 40, 2).obs[..., 0] == 2).all()
    assert int((data.sample_task(2, 40, 1).obs[..., 0] != 3).sum()) == 10


def test_prioritized_shared_samples_update_priorities_in_the_replay_they_came_from(tmp_path):
    """replay=prioritized with data sharing: a shared sample is drawn by its source replay's priorities (importance
    weights from them), and its TD error becomes its priority there, whatever task it trained."""
    from mtdqn.envs.driving.sim import OBS_DIM
    from mtdqn.types import Transition

    cfg = compose_cfg([*MTL, "task_set=driving", "data.batch_size=30", "data.share_fraction=0.5",
                       "replay=prioritized", "replay.alpha=1.0"], tmp_path)
    model, data, trainer = set_up(build(cfg))
    n = data.num_envs
    for i, buf in enumerate(data.buffers):  # task i's transitions read i + 1 in every feature
        for _ in range(40):
            x = torch.full((n, OBS_DIM), float(i + 1))
            buf.add(Transition(x, torch.zeros(n, dtype=torch.long), torch.ones(n), x,
                               torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)))
    before = [buf.tree.tree.clone() for buf in data.buffers]
    b = data.sample_task(2, 40, 1)  # traffic_light: half its own, a quarter each from lane_keep and pedestrian
    source = (b.obs[..., 0].long() - 1).reshape(-1)
    assert [int((source == j).sum()) for j in range(3)] == [10, 10, 20] and (b.task_ids == 2).all()
    td = source.double() * 10 + 3  # |TD| 3, 13, 23 by the replay a sample came from
    data.update_priorities(b.indices.reshape(-1), td, b.task_ids.reshape(-1))
    for j, buf in enumerate(data.buffers):
        changed = (buf.tree.tree != before[j])[buf.tree.capacity:].nonzero().reshape(-1)
        assert changed.numel() > 0, j  # every source replay got its samples' TD errors, the shared ones too
        assert torch.allclose(buf.tree.leaves(changed), torch.tensor(10.0 * j + 3 + buf.eps, dtype=torch.float64))
        assert buf.max_priority == pytest.approx(10 * j + 3 + buf.eps)


@pytest.mark.slow
def test_training_with_prioritized_shared_samples_runs(tmp_path):
    cfg = compose_cfg([*MTL, "task_set=driving", "data.share_fraction=[0.5,0,0.5]", "replay=prioritized"], tmp_path)
    summary = train(cfg)
    assert summary["status"] == "completed" and "eval/min_normalized" in summary


@pytest.mark.parametrize("stop_feature", [False, True])
def test_training_with_shared_samples_runs(tmp_path, stop_feature):
    extra = ["+task_set.env_kwargs.stop_feature=true"] if stop_feature else []
    cfg = compose_cfg([*MTL, "task_set=driving", "data.share_fraction=[0.5,0,0.5]", *extra], tmp_path)
    model, _, _ = build(cfg)
    assert model.q_net.max_obs_dim == (28 if stop_feature else 26)  # the stop point reaches the network
    summary = train(cfg)
    assert summary["status"] == "completed" and "eval/min_normalized" in summary


@pytest.mark.parametrize(("overrides", "match"), [
    (["task_set=driving", "data.share_fraction=1.0"], "data.share_fraction=1.0 must be in"),
    (["task_set=driving", "data.share_fraction=-0.1"], "data.share_fraction=-0.1 must be in"),
    (["task_set=driving", "data.share_fraction=[0.5,0.5]"], "one per task"),
    (["task_set=driving", "data.share_fraction=[0.5,0,1]"], "must be in"),
    (["task_set=driving", "data.share_fraction=0.5", "+task_set.env_kwargs.obs_noise=0.05"], "noise-free"),
    (["task_set=gym", "task_set.tasks=[CartPole-v1,Acrobot-v1]", "data.share_fraction=0.5"], "task_set.kind='gym'"),
    (["task_set=driving", "task_set.tasks=[pedestrian]", "data.share_fraction=0.5"], "has one task"),
    (["task_set=driving", "task_set.tasks=[urban,pedestrian]", "+task_set.env_kwargs.stop_feature=true",
      "data.share_fraction=[0,0.5]"], "pedestrian would draw 0.5 of its samples .* none of them has a share rule"),
])
def test_bad_share_settings_are_refused_before_any_env_step(tmp_path, overrides, match):
    cfg = compose_cfg([*MTL, *overrides], tmp_path)
    with pytest.raises(ValueError, match=match):
        build(cfg)


@pytest.mark.parametrize(("extra", "stops"), [
    (["callbacks.eval.stop_at_normalized=-1000"], True),
    (["callbacks.eval.stop_at_normalized=-1000", "callbacks.eval.stop_at_return=[-1e9,-1e9,1e9]"], False),
    (["callbacks.eval.stop_at_return=[-1e9,-1e9,-1e9]"], True),
])
def test_a_multitask_run_stops_only_when_every_task_reaches_its_bar(tmp_path, extra, stops):
    """callbacks.eval.stop_at_normalized / stop_at_return on three tasks: the run ends at the first evaluation
    where every task clears its bar (both settings when both are given); one task short keeps it training."""
    summary = train(compose_cfg([*MTL, "task_set=driving", "data.env_steps_per_round=24", "data.learning_starts=48",
                                 "data.batch_size=30", *extra], tmp_path))
    assert summary["status"] == "completed"
    assert summary["time/env_steps"] < 600 if stops else summary["time/env_steps"] >= 600
    assert summary.get("time/stopped_solved") == (1.0 if stops else None)


def test_updates_wait_until_every_tasks_replay_can_be_sampled(tmp_path):
    """Warm-up ends at data.learning_starts summed env steps, but a task collecting a small share may then hold no
    transition whose n-step look-ahead is written (here 3 steps per env, n_step 5): the first update waits for it
    instead of failing on an unsampleable replay."""
    cfg = compose_cfg([*MTL, "task_set=driving", "data.num_envs=4", "data.env_steps_per_round=60",
                       "data.collect_weights=[1,1,3]", "data.learning_starts=48", "data.batch_size=12",
                       "replay.n_step=5"], tmp_path)
    model, data, trainer = set_up(build(cfg))
    assert data.vec_steps == [3, 3, 9]  # lane_keep and pedestrian: 3 steps per env and round
    round_ = next(iter(data.train_dataloader()))
    assert round_.env_steps == 120  # not the first round (60 env steps >= learning_starts): lane_keep had 3 < 5 rows
    assert all(b.sampleable > 0 for b in data.buffers)


def test_metrics_of_some_rounds_only_are_not_repeated_in_the_others(tmp_path):
    """Gradient cosines (every grad_diagnostics_every rounds) and a task's rollout return (rounds where one of its
    episodes ended) went through Lightning's log_dict, which kept their last value in every later row."""
    import json

    summary = train(compose_cfg(["+experiment=lane_keep_mtl", "debug=smoke", "logger=jsonl", "callbacks.progress=null",
                                 "model.grad_diagnostics_every=3"], tmp_path))
    assert summary["status"] == "completed"
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rows if "train/td_loss" in r]
    cos = [i for i, r in enumerate(rounds) if "train/grad_cos/lane_keep__pedestrian" in r]
    assert cos and cos == list(range(cos[0], len(rounds), 3))
    assert sum("rollout/pedestrian/return" in r for r in rounds) < len(rounds)  # smoke episodes span rounds


@pytest.mark.parametrize(("overrides", "match"), [
    (["data.task_weights=[1,3,1]"], r"data.task_weights=\[1, 3, 1\] is read only with data.batch_composition=weighted "
                                    r"\(here 'uniform'\)"),
    (["data.batch_composition=weighted", "data.task_weights=[0,1,1]"],
     r"gives \['lane_keep'\] 0 of the 30 samples of every minibatch"),
    (["data.batch_composition=weighted", "data.task_weights=[0.01,1,1]"], r"gives \['lane_keep'\] 0 of the 30"),
    (["data.batch_composition=weighted", "data.task_weights=[-1,1,1]"], r"data.task_weights=\[-1, 1, 1\]: task shares"),
    (["data.batch_size=2", "data.learning_starts=200"],
     r"data.batch_size=2 is smaller than the number of tasks \(3\): every minibatch needs at least one sample of "
     r"each task"),  # a uniform split of 2 samples over 3 tasks trained two of them, silently
    (["model.task_weights=[1,0,1]"], r"model.task_weights=\[1, 0, 1\] is read only with model.loss_balance=weighted "
                                     r"\(here 'sum'\)"),
    (["model.loss_balance=weighted", "model.task_weights=[0,0,0]"], r"needs a weight > 0"),
])
def test_task_weights_that_would_be_ignored_or_starve_a_task_are_refused(tmp_path, overrides, match):
    """Weights for a mode that is not selected changed nothing (the run was identical without them); a weighted
    minibatch that gives a task no sample crashed in the gradient diagnostics of heterogeneous task sets and logged
    that task's TD loss as 0."""
    with pytest.raises(ValueError, match=match):
        build(compose_cfg([*MTL, "task_set=driving", "data.batch_size=30", *overrides], tmp_path))


def test_a_solved_task_scaled_to_no_sample_keeps_one(tmp_path):
    cfg = compose_cfg([*MTL, "task_set=driving", "data.num_envs=2", "data.env_steps_per_round=24",
                       "data.learning_starts=40", "data.batch_size=30", "data.collect_schedule=by_score",
                       "data.batch_solved_scale=0.01"], tmp_path)
    model, data, trainer = set_up(build(cfg))
    data.observe_scores([0.95, 0.3, 0.3])  # lane_keep's weight 0.01 of 2.01: 0.15 of a sample
    assert data.composition_counts() == [1, 14, 15] and sum(data.composition_counts()) == 30


@pytest.mark.parametrize(("override", "match"), [
    ("data.collect_unsolved_score=0.5", r"data.collect_unsolved_score=0.5: read only with "
                                        r"data.collect_schedule=by_score \(here 'fixed'\)"),
    ("data.collect_solved_scale=0.3", r"data.collect_solved_scale=0.3: read only with data.collect_schedule=by_score"),
    ("data.collect_solved_score=0.8", r"data.collect_solved_score=0.8: read only with data.collect_schedule=by_score"),
    ("model.popart_beta=0.1", r"model.popart_beta=0.1 is read only with model.popart=true"),
])
def test_settings_of_an_option_that_is_off_are_refused(tmp_path, override, match):
    """The by-score schedule's scores and scale without the schedule, PopArt's step size without PopArt: the run
    went ahead and they changed nothing, where data.batch_solved_scale and task_weights were already refused."""
    with pytest.raises(ValueError, match=match):
        build(compose_cfg([*MTL, "task_set=driving", override], tmp_path))


def test_the_configs_defaults_are_the_ones_the_refusals_compare_with(tmp_path):
    """The by-score and PopArt settings are refused when they differ from their defaults without their option:
    conf/train.yaml and conf/model/mtdqn.yaml must keep the code's defaults, or every run would be refused."""
    from mtdqn.data.multitask import SOLVED_SCALE, SOLVED_SCORE
    from mtdqn.models.mtdqn import POPART_BETA

    cfg = compose_cfg(["+experiment=lane_keep_mtl"], tmp_path)
    assert (cfg.data.collect_solved_score, cfg.data.collect_solved_scale) == (SOLVED_SCORE, SOLVED_SCALE)
    assert cfg.data.collect_unsolved_score is None and cfg.model.popart_beta == POPART_BETA
