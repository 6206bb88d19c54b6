"""Atari (optional extra .[atari]) and what it rests on: gymnasium wrappers from task_set.env_kwargs.wrappers,
uint8 frames scaled to [0, 1], and replay that stores gridded observations as uint8."""

import numpy as np
import pytest
import torch

from mtdqn.envs import GymVecEnv, check_gym_id, env_factory, task_spec
from mtdqn.envs.gym_adapter import split_env_kwargs
from mtdqn.replay import PrioritizedReplayBuffer, ReplayBuffer
from mtdqn.replay.buffer import check_frame_stack, check_obs_storage
from mtdqn.train import build
from mtdqn.types import Transition
from tests.helpers.config import compose_cfg

STACK = [{"wrapper": "gymnasium.wrappers.FrameStackObservation", "kwargs": {"stack_size": 3}}]
SMOKE = ["debug=smoke", "logger=jsonl", "callbacks.progress=null"]
QUIET = ["debug=smoke", "logger=jsonl", "callbacks=none"]  # no evaluation, checkpoints or progress bar
# the preset at a size a test can train: 2 Pong envs, small replay, a few updates, one short evaluation
ATARI_DATA = ["+experiment=atari_dqn", "data.num_envs=2", "data.total_env_steps=160", "data.env_steps_per_round=40",
              "data.learning_starts=80", "replay.capacity=400"]
ATARI = [*SMOKE, *ATARI_DATA, "callbacks.eval.every_env_steps=100000", "callbacks.eval.episodes=1",
         "callbacks.checkpoint.every_env_steps=160"]


def _frames(n_envs: int, values: torch.Tensor) -> Transition:
    z = torch.zeros(n_envs, dtype=torch.bool)
    return Transition(obs=values, action=torch.zeros(n_envs, dtype=torch.int64), reward=torch.ones(n_envs),
                      next_obs=values.flip(-1), terminated=z, truncated=z)


# --- wrappers from the config -------------------------------------------------------------------------------------

def test_wrappers_apply_in_order_to_every_env_and_shape_the_spec():
    spec = check_gym_id("CartPole-v1", {"wrappers": STACK})
    assert spec.obs_dim == 12 and spec.obs_shape == (3, 4)  # a (3, 4) stack is 2-D: conv nets may read it as an image
    env = GymVecEnv("CartPole-v1", num_envs=2, env_kwargs={"wrappers": STACK})
    obs = env.reset(seed=0)
    assert obs.shape == (2, 12)
    res = env.step(torch.zeros(2, dtype=torch.int64))
    # the newest frame is last in the stack; the previous one (the reset frame) moved up by one slot
    assert torch.equal(res.next_obs.reshape(2, 3, 4)[:, 1], obs.reshape(2, 3, 4)[:, 2])


@pytest.mark.parametrize("wrappers, match", [
    ("gymnasium.wrappers.FrameStackObservation", "expected a list"),
    ([{"kwargs": {"stack_size": 2}}], r"wrappers\[0\].*expected \{wrapper"),
    ([{"wrapper": "gymnasium.wrappers.FrameStackObservation", "stack_size": 2}], r"wrappers\[0\].*expected"),
    ([{"wrapper": "gymnasium.wrappers.NoSuchWrapper"}], r"wrappers\[0\]\.wrapper='gymnasium.wrappers.NoSuchWrapper' cannot be imported"),
    ([*STACK, {"wrapper": "no_such_package.Wrapper"}], r"wrappers\[1\]\.wrapper='no_such_package.Wrapper' cannot be imported"),
    ([{"wrapper": "gymnasium.wrappers.FrameStackObservation", "kwargs": {"stack_size": 0}}],
     r"wrappers\[0\] \(FrameStackObservation\{'stack_size': 0\}\) on 'CartPole-v1'"),
])
def test_bad_wrappers_are_refused_with_their_key(wrappers, match):
    with pytest.raises(ValueError, match=match):
        check_gym_id("CartPole-v1", {"wrappers": wrappers})


def test_wrappers_are_not_passed_to_gymnasium_make_and_driving_refuses_them():
    kwargs, wrappers = split_env_kwargs({"max_episode_steps": 50, "wrappers": STACK})
    assert kwargs == {"max_episode_steps": 50} and [cls.__name__ for cls, _ in wrappers] == ["FrameStackObservation"]
    with pytest.raises(ValueError, match="task_set.env_kwargs.wrappers: gymnasium wrappers apply to task_set.kind='gym'"):
        task_spec("driving", "lane_keep", {"wrappers": STACK})


# --- uint8 replay ----------------------------------------------------------------------------------------------------

def test_uint8_storage_reads_gridded_observations_back_exactly_in_a_quarter_of_the_memory():
    levels = torch.randint(0, 256, (3, 4, 6), generator=torch.Generator().manual_seed(0))
    levels[0, 0] = torch.tensor([0, 1, 127, 128, 254, 255])
    frames = torch.from_numpy(levels.numpy().astype(np.float32) * np.float32(1 / 255))  # as the env adapter scales
    small = ReplayBuffer(capacity=12, num_envs=4, obs_dim=6, gamma=0.9, obs_quantum=1 / 255)
    full = ReplayBuffer(capacity=12, num_envs=4, obs_dim=6, gamma=0.9, obs_storage="float32", obs_quantum=1 / 255)
    for t in range(3):
        small.add(_frames(4, frames[t]))
        full.add(_frames(4, frames[t]))
    assert small.obs.dtype == torch.uint8 and full.obs.dtype == torch.float32
    assert torch.equal(small.obs[:3], levels.to(torch.uint8))
    assert torch.equal(small.observations(), frames) and torch.equal(full.observations(), frames)
    a, b = small.sample(16, n_batches=2), full.sample(16, n_batches=2)  # same seed, same draws
    assert torch.equal(a.obs, b.obs) and torch.equal(a.next_obs, b.next_obs) and a.obs.dtype == torch.float32
    assert small.bytes_per_transition == 2 * 6 + 14 and full.bytes_per_transition == 2 * 6 * 4 + 14


def test_boolean_images_are_stored_as_uint8_and_continuous_observations_as_float32():
    assert ReplayBuffer(8, 2, 3, 0.9, obs_quantum=1.0).obs.dtype == torch.uint8  # MinAtar's 0/1 images
    assert ReplayBuffer(8, 2, 3, 0.9).obs.dtype == torch.float32  # no grid declared: continuous
    assert PrioritizedReplayBuffer(8, 2, 3, 0.9, obs_quantum=1.0).obs.dtype == torch.uint8
    assert check_obs_storage("float32", 1.0) == torch.float32
    with pytest.raises(ValueError, match="replay.obs_storage='uint8' needs observations on a 0-255 grid"):
        ReplayBuffer(8, 2, 3, 0.9, obs_storage="uint8")
    with pytest.raises(ValueError, match=r"replay.obs_storage='half' is not one of \('auto', 'float32', 'uint8'\)"):
        ReplayBuffer(8, 2, 3, 0.9, obs_storage="half", obs_quantum=1.0)


def test_replay_state_with_other_storage_is_refused():
    small = ReplayBuffer(8, 2, 3, 0.9, obs_quantum=1.0)
    small.add(_frames(2, torch.ones(2, 3)))
    with pytest.raises(ValueError, match="replay.obs_storage differs"):
        ReplayBuffer(8, 2, 3, 0.9).load_state_dict(small.state_dict())


def test_observation_noise_takes_frames_off_the_grid(tmp_path):
    """A perturbed env declares no grid (replay keeps float32); asking for uint8 then fails before any env step."""
    pytest.importorskip("minatar", reason="needs the optional extra .[minatar] (boolean images)")
    plain = env_factory("gym", "MinAtar/Breakout-v1")(num_envs=2)
    noisy = env_factory("gym", "MinAtar/Breakout-v1", perturb={"obs_noise": 0.1})(num_envs=2)
    assert plain.obs_quantum == 1.0 and noisy.obs_quantum is None
    cfg = compose_cfg([*SMOKE, "+experiment=minatar_dqn", "replay.obs_storage=uint8", "perturb.obs_noise=0.1"], tmp_path)
    with pytest.raises(ValueError, match=r"needs observations on a 0-255 grid.*task MinAtar-Breakout-v1, with obs_noise"):
        build(cfg)
    cfg = compose_cfg([*SMOKE, "task_set=cartpole", "replay.obs_storage=uint8"], tmp_path)
    with pytest.raises(ValueError, match=r"replay.obs_storage='uint8'.*continuous.*task CartPole-v1"):
        build(cfg)


def test_minatar_run_stores_uint8_and_learns_the_same_as_with_float32(tmp_path):
    """The storage is exact: a MinAtar run with uint8 replay ends with the very weights of one with float32."""
    pytest.importorskip("minatar", reason="needs the optional extra .[minatar]")
    weights = []
    for storage in ("auto", "float32"):
        cfg = compose_cfg([*QUIET, "+experiment=minatar_dqn", f"replay.obs_storage={storage}", "net.hidden=[16]",
                           "data.total_env_steps=800", "data.learning_starts=200"], tmp_path / storage)
        model, data, trainer = build(cfg)
        trainer.fit(model, datamodule=data)
        assert data.buffer.obs.dtype == (torch.uint8 if storage == "auto" else torch.float32)
        weights.append(torch.cat([p.detach().flatten() for p in model.q_net.parameters()]))
    assert trainer.global_step > 0 and torch.equal(weights[0], weights[1])


def _drive(buffers: list[ReplayBuffer], env: GymVecEnv, steps: int, seed: int = 0) -> None:
    """Random actions in `env`, every transition added to every buffer."""
    gen = torch.Generator().manual_seed(seed)
    obs = env.reset(seed=seed)
    for _ in range(steps):
        res = env.step(torch.randint(0, env.n_actions, (env.num_envs,), generator=gen))
        for b in buffers:
            b.add(Transition(obs, torch.zeros(env.num_envs, dtype=torch.int64), res.reward, res.next_obs,
                             res.terminated, res.truncated))
        obs = res.obs


def test_frame_stacks_stored_frame_by_frame_give_back_the_very_same_samples():
    """3-frame CartPole stacks (episodes end every ~20 steps, the ring wraps twice): every sampleable transition,
    with 3-step returns across episode ends, reads back exactly as from a buffer of whole stacks."""
    env = GymVecEnv("CartPole-v1", num_envs=4, env_kwargs={"wrappers": STACK})
    assert env.obs_frames == 3
    framed = ReplayBuffer(200, 4, 12, 0.9, n_step=3, frame_stack=3, obs_frames=3)
    whole = ReplayBuffer(200, 4, 12, 0.9, n_step=3, frame_stack=1, obs_frames=3)
    assert framed.frames == 3 and framed.obs.shape == (50, 4, 4) and whole.obs.shape == (50, 4, 12)
    _drive([framed, whole], env, 130)
    assert framed.size == framed.rows and bool(framed.done.any())
    skip = framed.frames - 1  # once the ring wraps, the oldest rows' stacks may reach into overwritten ones
    logical = torch.arange(skip, framed.size - (framed.n_step - 1))
    rows = ((framed.pos + logical) % framed.rows).unsqueeze(1).expand(-1, 4)
    envs = torch.arange(4).expand(len(logical), -1)
    a, b = framed.gather(rows, envs, torch.ones(rows.shape)), whole.gather(rows, envs, torch.ones(rows.shape))
    for name in ("obs", "next_obs", "rewards", "discounts"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert framed.sampleable == len(logical) * 4 and int(framed.sample(64).obs.shape[-1]) == 12
    state = framed.state_dict()
    again = ReplayBuffer(200, 4, 12, 0.9, n_step=3, frame_stack=3, obs_frames=3)
    again.load_state_dict(state)
    assert torch.equal(again.gather(rows, envs, torch.ones(rows.shape)).next_obs, b.next_obs)
    with pytest.raises(ValueError, match="replay state and this buffer store frame stacks differently"):
        whole.load_state_dict(state)


def test_frame_stack_settings_are_checked():
    assert check_frame_stack("auto", 4, 16, torch.uint8) == 4 and check_frame_stack("auto", 4, 16, torch.float32) == 1
    assert check_frame_stack("auto", None, 16, torch.uint8) == 1 and check_frame_stack(1, 4, 16, torch.uint8) == 1
    with pytest.raises(ValueError, match="replay.frame_stack=4 needs observations that are 4-frame stacks"):
        check_frame_stack(4, None, 16, torch.uint8)
    with pytest.raises(ValueError, match="replay.frame_stack='two' is invalid"):
        check_frame_stack("two", 4, 16, torch.uint8)
    with pytest.raises(ValueError, match="replay.frame_stack=4 is not supported with replay=prioritized"):
        PrioritizedReplayBuffer(8, 2, 16, 0.9, frame_stack=4, obs_frames=4)
    buf = ReplayBuffer(16, 2, 6, 0.9, frame_stack=3, obs_frames=3)
    frames = torch.arange(8, dtype=torch.float32).reshape(1, 4, 2).expand(2, -1, -1)  # 4 distinct frames
    z = torch.zeros(2, dtype=torch.bool)
    first = Transition(frames[:, :3].reshape(2, 6), torch.zeros(2, dtype=torch.int64), torch.ones(2),
                       frames[:, 1:].reshape(2, 6), z, z)  # a successor shifted right, but no episode start
    with pytest.raises(ValueError, match="neither continues the previous step's nor starts an episode"):
        buf.add(first)
    with pytest.raises(ValueError, match="a successor observation is not its observation's 3-frame stack"):
        buf.add(first._replace(next_obs=first.obs))


# --- Atari -----------------------------------------------------------------------------------------------------------

@pytest.fixture
def ale():
    return pytest.importorskip("ale_py", reason="Atari needs the optional extra .[atari]")


def test_atari_task_set_gives_stacked_uint8_frames_scaled_to_unit_range(ale, tmp_path):
    cfg = compose_cfg(ATARI, tmp_path)
    env_kwargs = dict(cfg.task_set.env_kwargs)
    spec = task_spec("gym", "ALE/Pong-v5", env_kwargs)
    assert (spec.obs_shape, spec.obs_dim, spec.n_actions, spec.obs_quantum) == ((4, 84, 84), 4 * 84 * 84, 6, 1 / 255)
    env = GymVecEnv("ALE/Pong-v5", num_envs=2, env_kwargs=env_kwargs)
    obs = env.reset(seed=0)
    for _ in range(5):
        res = env.step(torch.ones(2, dtype=torch.int64))
    levels = res.next_obs * 255
    assert obs.dtype == torch.float32 and 0 <= float(res.next_obs.min()) and float(res.next_obs.max()) <= 1
    assert torch.allclose(levels, levels.round(), atol=1e-4) and float(levels.max()) > 50  # frames, not blanks
    raw = np.asarray(env.envs[0].unwrapped.ale.getScreenGrayscale())  # the ALE emulator runs behind the wrappers
    assert raw.shape == (210, 160)
    env.close()


def test_atari_preset_trains_with_uint8_replay_and_the_nature_network(ale, tmp_path):
    model, data, trainer = build(compose_cfg(ATARI, tmp_path))
    enc = model.q_net.encoder
    assert [c.out_channels for c in enc.convs if isinstance(c, torch.nn.Conv2d)] == [32, 64, 64]
    assert enc.out_sizes == [(20, 20), (9, 9), (7, 7)] and enc.out_dim == 64 * 7 * 7
    before = enc.convs[0].weight.detach().clone()
    trainer.fit(model, datamodule=data)
    assert trainer.global_step > 0 and not torch.equal(before, enc.convs[0].weight)
    buf = data.buffer
    # uint8, and each frame of the 4-frame stacks stored once: 14 KB a transition, not 56 KB
    assert buf.obs.dtype == torch.uint8 and buf.frames == 4 and buf.bytes_per_transition == 2 * 84 * 84 + 15
    stored = buf.observations()
    assert stored.shape == (buf.size, 2, 4 * 84 * 84)
    assert torch.allclose(stored * 255, (stored * 255).round(), atol=1e-4)  # on the grid, read back as floats
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert any('"eval/ALE-Pong-v5/return"' in r for r in rows)


def test_atari_games_train_together_on_one_shared_encoder(ale, tmp_path):
    """Pong (6 actions) and Breakout (4) with model=mtdqn: one encoder for both (same frame shape), one head each,
    Breakout's missing actions masked."""
    cfg = compose_cfg([*QUIET, *ATARI_DATA, "model=mtdqn", "net=multihead",
                       "task_set.tasks=[ALE/Pong-v5,ALE/Breakout-v5]"], tmp_path)
    model, data, trainer = build(cfg)
    assert [t.n_actions for t in model.tasks] == [6, 4] and len(model.q_net.encoders) == 1
    trainer.fit(model, datamodule=data)
    assert trainer.global_step > 0 and all(b.obs.dtype == torch.uint8 for b in data.buffers)
    assert int(model.policy_for(1)(data.buffers[1].observations()[0]).max()) < 4


def test_rounds_carry_uint8_frames_and_targets_are_computed_chunk_by_chunk(ale, tmp_path):
    """The data stream hands uint8 rounds (a quarter of the memory) with their grid; the round's target values,
    computed in cache-sized chunks, are the per-minibatch forwards of the dequantized frames."""
    from mtdqn.replay.buffer import dequantize

    model, data, trainer = build(compose_cfg([*QUIET, *ATARI_DATA, "data.total_env_steps=400"], tmp_path))
    trainer.fit(model, datamodule=data)
    assert data.round_obs_quantum == pytest.approx(1 / 255) and data.buffer.raw_obs
    batch = data.buffer.sample(32, n_batches=6)
    assert batch.obs.dtype == torch.uint8 and batch.next_obs.shape == (6, 32, 4 * 84 * 84)
    chunked = model.round_target_values(batch, data.round_obs_quantum)
    with torch.no_grad():
        each = torch.stack([model.target_net(dequantize(batch.next_obs[g], 1 / 255)) for g in range(6)])
    assert chunked.shape == (6, 32, 6) and torch.allclose(chunked, each, atol=1e-6)


def test_saved_replay_states_read_back_as_float_frame_stacks(ale, tmp_path):
    """A checkpoint's replay state (uint8, frame by frame) gives compression the observations the env produced:
    floats on the 1/255 grid, whole 4-frame stacks; drawn down to a cap before they become floats."""
    from mtdqn.compression.data import replay_observations
    from mtdqn.replay.buffer import stored_observations

    model, data, trainer = build(compose_cfg([*QUIET, *ATARI_DATA], tmp_path))
    trainer.fit(model, datamodule=data)
    buf = data.buffer
    state = buf.state_dict()
    assert state["frames"] == 4 and state["obs_quantum"] == pytest.approx(1 / 255)
    assert torch.equal(stored_observations(state), buf.observations())
    assert buf.observations().shape == (buf.size, 2, 4 * 84 * 84) and float(buf.observations().max()) <= 1.0
    capped = replay_observations([state], max_states=50)
    assert capped[0].shape == (50, 4 * 84 * 84)
    rows = {tuple(r.tolist()) for r in (buf.observations().reshape(-1, 4 * 84 * 84) * 255).round().to(torch.uint8)}
    assert all(tuple(r.tolist()) in rows for r in (capped[0] * 255).round().to(torch.uint8))


def test_atari_run_resumes_with_its_frame_by_frame_replay(ale, tmp_path):
    """Resume from a checkpoint: the restored rows read back as saved, and collection (reset envs: their stacks
    start episodes) continues through the frame checks to the new budget."""
    first = compose_cfg([*SMOKE, *ATARI_DATA, "callbacks.eval=null", "callbacks.checkpoint.every_env_steps=160"],
                        tmp_path / "first")
    model, data, trainer = build(first)
    trainer.fit(model, datamodule=data)
    saved = data.buffer.observations()
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    second = compose_cfg([*SMOKE, *ATARI_DATA, "callbacks.eval=null", "data.total_env_steps=320",
                          f"ckpt_path={ckpt}"], tmp_path / "second")
    model2, data2, trainer2 = build(second)
    trainer2.fit(model2, datamodule=data2, ckpt_path=str(ckpt))
    buf = data2.buffer
    assert data2.current_env_steps() == 320 and buf.frames == 4 and buf.size == 160
    assert torch.equal(buf.observations()[: saved.shape[0]], saved)
    assert int(buf.offset[saved.shape[0]].max()) == 0  # the first row after the resume starts episodes
    assert trainer2.global_step > trainer.global_step


def test_evaluation_epsilon_takes_random_actions_reproducibly(tmp_path):
    """callbacks.eval.epsilon: that share of evaluation actions is uniformly random, the same draws at every
    evaluation of one policy; 0 is greedy; out of range fails with the key."""
    from mtdqn.callbacks import EvalCallback

    greedy = lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64)  # noqa: E731
    obs = torch.zeros(20_000, 4)
    cb = EvalCallback(epsilon=0.05)
    first, again = cb.eval_policy(greedy, 3, 0)(obs), cb.eval_policy(greedy, 3, 0)(obs)
    assert torch.equal(first, again)  # seeded anew at every evaluation
    share = float((first != 0).float().mean())  # random actions that are not the greedy one: 0.05 x 2/3
    assert abs(share - 0.05 * 2 / 3) < 0.006
    assert EvalCallback().eval_policy(greedy, 3, 0) is greedy
    with pytest.raises(ValueError, match=r"callbacks.eval.epsilon=1.5 must lie in \[0, 1\]"):
        EvalCallback(epsilon=1.5)
    cfg = compose_cfg(ATARI, tmp_path)
    assert cfg.callbacks.eval.epsilon == 0.05
