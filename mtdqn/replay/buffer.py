"""Device-resident ring buffers of transitions with n-step returns computed at sampling time."""

from __future__ import annotations

import torch
from torch import Tensor

from mtdqn.replay.sumtree import SumTree
from mtdqn.types import Batch, Transition

OBS_STORAGES = ("auto", "float32", "uint8")


def check_obs_storage(storage: str, quantum: float | None) -> torch.dtype:
    """The dtype replay stores observations in (`replay.obs_storage`).

    `uint8` keeps each observation as integer multiples of the task's `obs_quantum` (1/255 for uint8 images the
    env adapter scales to [0, 1], 1 for boolean ones such as MinAtar's): a quarter of float32's memory, read back
    exactly. `auto` picks uint8 where the task declares a quantum, float32 elsewhere.
    """
    if storage not in OBS_STORAGES:
        raise ValueError(f"replay.obs_storage={storage!r} is not one of {OBS_STORAGES}")
    if storage == "uint8" and quantum is None:
        raise ValueError("replay.obs_storage='uint8' needs observations on a 0-255 grid (a uint8 or boolean Box "
                         "observation space); this task's are continuous: use 'auto' or 'float32'")
    return torch.uint8 if storage == "uint8" or (storage == "auto" and quantum is not None) else torch.float32


def dequantize(obs: Tensor, quantum: float | None) -> Tensor:
    """uint8 observations as float32 multiples of `quantum` (one kernel); float ones (or quantum None) unchanged."""
    return obs if quantum is None or obs.dtype != torch.uint8 else torch.mul(obs, quantum)


def check_frame_stack(frame_stack: int | str, obs_frames: int | None, obs_dim: int, dtype: torch.dtype) -> int:
    """How many frames each stored observation stack holds once (`replay.frame_stack`; 1 = store whole stacks).

    With frame stacks (Atari's FrameStackObservation) consecutive observations share all but one frame; storing
    each frame once takes a quarter of the memory of 4-frame stacks (Dopamine and DQN Zoo do the same). `auto`
    does it where the env declares its stacks (`obs_frames`) and replay stores uint8; an explicit k needs the env
    to declare k-frame stacks.
    """
    if frame_stack == "auto":
        return obs_frames if obs_frames and obs_frames > 1 and dtype == torch.uint8 else 1
    if isinstance(frame_stack, bool) or not isinstance(frame_stack, int) or frame_stack < 1:
        raise ValueError(f"replay.frame_stack={frame_stack!r} is invalid: expected 'auto' or a positive integer")
    if frame_stack > 1 and obs_frames != frame_stack:
        raise ValueError(f"replay.frame_stack={frame_stack} needs observations that are {frame_stack}-frame stacks "
                         f"(a FrameStackObservation wrapper, padding_type='reset'); this env's "
                         f"{'are ' + str(obs_frames) + '-frame stacks' if obs_frames else 'are not stacks'}")
    if frame_stack > 1 and obs_dim % frame_stack:
        raise ValueError(f"replay.frame_stack={frame_stack} does not divide the observation size {obs_dim}")
    return frame_stack


class ReplayBuffer:
    """Uniform replay laid out as (rows, num_envs): one row per vector step, inserted without Python loops.

    n-step returns are formed when sampling, by looking up to n rows ahead in the same env's column and stopping
    at the first terminated or truncated step. Rows whose look-ahead is not written yet are never sampled.
    """

    def __init__(
        self,
        capacity: int,  # transitions (rounded down to a multiple of num_envs)
        num_envs: int,
        obs_dim: int,
        gamma: float,
        n_step: int = 1,
        device: torch.device | str = "cpu",
        seed: int = 0,
        task_id: int = 0,
        obs_storage: str = "auto",  # auto | float32 | uint8 (see check_obs_storage)
        obs_quantum: float | None = None,  # the task's observations are integer multiples of this (TaskSpec)
        frame_stack: int | str = "auto",  # auto | 1 | k: store each frame of a k-frame stack once (see below)
        obs_frames: int | None = None,  # the env's observations are stacks of this many frames (GymVecEnv)
    ) -> None:
        if capacity <= 0 or num_envs <= 0 or obs_dim <= 0 or n_step <= 0:
            raise ValueError(f"replay: capacity={capacity}, num_envs={num_envs}, n_step={n_step} must be > 0")
        if not 0.0 < gamma <= 1.0:
            # conf/replay sets replay.gamma to ${gamma}: the top-level gamma is checked in validate(), so a bad
            # value here was given as replay.gamma
            raise ValueError(f"replay.gamma={gamma} must lie in (0, 1] (the discount; it follows the top-level "
                             "gamma unless replay.gamma is given)")
        self.obs_dtype = check_obs_storage(obs_storage, obs_quantum)
        self.obs_quantum = float(obs_quantum) if self.obs_dtype == torch.uint8 else None
        # True: samples keep uint8 observations (Batch.obs as stored) for the consumer to turn into floats one
        # minibatch at a time (the data stream sets it, Round.obs_quantum tells training_step); a round of Atari
        # minibatches is then 115 MB of uint8 rather than 460 MB of float32
        self.raw_obs = False
        self.frames = check_frame_stack(frame_stack, obs_frames, obs_dim, self.obs_dtype)
        self.frame_dim = obs_dim // self.frames
        self.rows = max(capacity // num_envs, n_step + self.frames)
        self.num_envs, self.obs_dim, self.gamma, self.n_step = num_envs, obs_dim, gamma, n_step
        self.device, self.task_id = torch.device(device), task_id
        shape = (self.rows, num_envs)
        # uninitialized: only written rows are ever read (sampling, state_dict), so the OS commits memory as the
        # buffer fills (a 100k Atari replay is 1.4 GB once full with frame stacks stored once, not at the start).
        # With frames > 1, obs / next_obs hold only each stack's newest frame; `offset` counts the earlier rows of
        # the same episode a stack reaches back to (0 at an episode's first observation, whose stack repeats it)
        self.obs = torch.empty(*shape, self.frame_dim, dtype=self.obs_dtype, device=self.device)
        self.next_obs = torch.empty(*shape, self.frame_dim, dtype=self.obs_dtype, device=self.device)
        if self.frames > 1:
            self.offset = torch.zeros(shape, dtype=torch.int8, device=self.device)
            self._last_next: Tensor | None = None  # the last row's stored next observations (N, obs_dim)
            self._stack_pos = torch.arange(self.frames, device=self.device)
        self.actions = torch.zeros(shape, dtype=torch.int64, device=self.device)
        self.rewards = torch.zeros(shape, device=self.device)
        self.terminated = torch.zeros(shape, dtype=torch.bool, device=self.device)
        self.done = torch.zeros(shape, dtype=torch.bool, device=self.device)
        self.pos, self.size = 0, 0  # next row to write, rows filled
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._gammas = gamma ** torch.arange(n_step, device=self.device, dtype=torch.float32)

    def __len__(self) -> int:
        return self.size * self.num_envs

    @property
    def _skip(self) -> int:
        """Oldest rows never sampled: once the ring wraps, the first frames - 1 rows' stacks may reach back to
        overwritten rows."""
        return self.frames - 1 if self.size == self.rows else 0

    @property
    def sampleable(self) -> int:
        """Number of transitions that can be sampled (their n-step look-ahead is written)."""
        return max(self.size - (self.n_step - 1) - self._skip, 0) * self.num_envs

    def add(self, t: Transition) -> None:
        """Write one row: a transition from each env."""
        p = self.pos
        if self.frames > 1:
            self._add_frames(p, self._store(t.obs), self._store(t.next_obs))
        else:
            self.obs[p] = self._store(t.obs)
            self.next_obs[p] = self._store(t.next_obs)
        self.actions[p] = t.action
        self.rewards[p] = t.reward
        self.terminated[p] = t.terminated
        self.done[p] = t.terminated | t.truncated
        self.pos = (p + 1) % self.rows
        self.size = min(self.size + 1, self.rows)

    def _add_frames(self, p: int, obs: Tensor, next_obs: Tensor) -> None:
        """Store the newest frame of each stack, checking that the stacks are what frame_stack assumes: the
        successor shifts the stack by one frame, an observation either continues the last row's successor or
        starts an episode (a stack of one repeated frame, FrameStackObservation's padding_type='reset')."""
        n, k, f = self.num_envs, self.frames, self.frame_dim
        stack = obs.view(n, k, f)
        if not torch.equal(next_obs.view(n, k, f)[:, :-1], stack[:, 1:]):
            raise ValueError(f"replay.frame_stack={k}: a successor observation is not its observation's {k}-frame "
                             "stack shifted by one frame; set replay.frame_stack=1")
        cont = ((obs == self._last_next).all(-1) if self._last_next is not None
                else torch.zeros(n, dtype=torch.bool, device=obs.device))
        fresh = (stack == stack[:, -1:]).all(-1).all(-1)
        if not bool((cont | fresh).all()):
            raise ValueError(f"replay.frame_stack={k}: an observation neither continues the previous step's nor "
                             "starts an episode with one repeated frame (FrameStackObservation with "
                             "padding_type='reset'); set replay.frame_stack=1")
        prev = self.offset[(p - 1) % self.rows].to(torch.int64) if self.size else torch.zeros_like(cont, dtype=torch.int64)
        self.offset[p] = torch.where(cont, (prev + 1).clamp(max=k - 1), 0).to(torch.int8)
        self.obs[p] = stack[:, -1]
        self.next_obs[p] = next_obs[:, -f:]
        self._last_next = next_obs.clone()

    def _stacks(self, rows: Tensor, envs: Tensor) -> Tensor:
        """The stored observations of `rows` x `envs` (same shape S): (*S, obs_dim), frames rebuilt from the rows
        of their episode (the episode's first frame repeated where the stack reaches before it)."""
        if self.frames == 1:
            return self.obs[rows, envs]
        back = (self.frames - 1 - self._stack_pos).minimum(self.offset[rows, envs].to(torch.int64).unsqueeze(-1))
        src = (rows.unsqueeze(-1) - back) % self.rows
        return self.obs[src, envs.unsqueeze(-1)].reshape(*rows.shape, self.obs_dim)

    def _next_stacks(self, rows: Tensor, envs: Tensor) -> Tensor:
        """The stored successor observations of `rows` x `envs`: the observation's stack shifted by one frame."""
        if self.frames == 1:
            return self.next_obs[rows, envs]
        stack = self._stacks(rows, envs)
        return torch.cat([stack[..., self.frame_dim :], self.next_obs[rows, envs]], dim=-1)

    def _store(self, obs: Tensor) -> Tensor:
        """Observations as stored: unchanged, or as uint8 multiples of obs_quantum (exact for quantized obs)."""
        if self.obs_quantum is None:
            return obs
        return (obs / self.obs_quantum).round_().clamp_(0, 255).to(torch.uint8)

    def _load(self, stored: Tensor) -> Tensor:
        """Stored observations back as float32 (stored * obs_quantum for uint8 storage)."""
        return dequantize(stored, self.obs_quantum)

    def observations(self, max_count: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Every filled row's observations, (rows filled, num_envs, obs_dim) float32 (with frame stacks in a
        wrapped ring, the rows whose stacks exist, as sampled); with `max_count`, at most that many of them drawn
        uniformly without replacement, (k, obs_dim) (a full Atari replay as floats would be 11 GB)."""
        first, count = self.pos - self.size + self._skip, self.size - self._skip  # logical rows whose stacks exist
        n = count * self.num_envs
        if max_count is not None and n > max_count:
            flat = torch.randperm(n, generator=generator)[:max_count].to(self.device)
            return self._load(self._stacks((first + flat // self.num_envs) % self.rows, flat % self.num_envs))
        if self.frames == 1:
            return self._load(self.obs[: self.size])
        rows = ((first + torch.arange(count, device=self.device)) % self.rows).unsqueeze(1).expand(-1, self.num_envs)
        envs = torch.arange(self.num_envs, device=self.device).expand(count, -1)
        return self._load(self._stacks(rows, envs))

    @property
    def bytes_per_transition(self) -> int:
        """Memory one stored transition takes (obs, next_obs or their newest frames, action, reward, two flags,
        and with frame stacks the offset)."""
        return 2 * self.frame_dim * self.obs.element_size() + 8 + 4 + 2 + (self.frames > 1)

    def _check(self, batch_size: int) -> None:
        if self.sampleable == 0 or batch_size <= 0:
            raise RuntimeError(f"cannot sample batch_size={batch_size} from {self.sampleable} sampleable transitions")

    def sample(self, batch_size: int, n_batches: int = 1) -> Batch:
        """Uniformly sample `n_batches` minibatches at once, stacked as (n_batches, batch_size)."""
        self._check(batch_size)
        flat = torch.randint(0, self.sampleable, (n_batches, batch_size), generator=self.generator, device=self.device)
        rows = (self.pos - self.size + self._skip + flat // self.num_envs) % self.rows
        return self.gather(rows, flat % self.num_envs, torch.ones(flat.shape, device=self.device))

    def gather(self, rows: Tensor, envs: Tensor, weights: Tensor) -> Batch:
        """Assemble (n-step) samples for physical `rows` and `envs` (same shape)."""
        if self.n_step == 1:
            end, rewards = rows, self.rewards[rows, envs]
            n_eff = torch.ones_like(rows)
        else:
            ahead = (rows.unsqueeze(-1) + torch.arange(self.n_step, device=self.device)) % self.rows
            env_col = envs.unsqueeze(-1)
            done = self.done[ahead, env_col]
            included = (done.cumsum(-1) - done.long()) == 0  # step k counts if no episode end before it
            rewards = (self.rewards[ahead, env_col] * self._gammas * included).sum(-1)
            n_eff = included.sum(-1)
            end = ahead.gather(-1, (n_eff - 1).unsqueeze(-1)).squeeze(-1)
        terminated = self.terminated[end, envs]
        discounts = torch.where(terminated, 0.0, self.gamma ** n_eff.to(torch.float32))
        load = (lambda x: x) if self.raw_obs else self._load
        return Batch(
            obs=load(self._stacks(rows, envs)),
            actions=self.actions[rows, envs],
            rewards=rewards,
            next_obs=load(self._next_stacks(end, envs)),
            discounts=discounts,
            weights=weights,
            indices=rows * self.num_envs + envs,
            task_ids=torch.full_like(rows, self.task_id),
        )

    def update_priorities(self, indices: Tensor, td_errors: Tensor) -> None:
        """Uniform replay ignores priorities."""

    def set_progress(self, fraction: float) -> None:
        """The fraction of training done (env steps / data.total_env_steps); uniform replay ignores it."""

    @property
    def _TENSORS(self) -> tuple[str, ...]:  # noqa: N802 (was a class constant; frame stacks add `offset`)
        base = ("obs", "next_obs", "actions", "rewards", "terminated", "done")
        return (*base, "offset") if self.frames > 1 else base

    def state_dict(self) -> dict:
        """Filled rows, counters and RNG state (tensors and ints only: loadable weights-only)."""
        n = self.rows if self.size == self.rows else self.size
        state = {k: getattr(self, k)[:n].clone() for k in self._TENSORS}
        state.update(pos=self.pos, size=self.size, rng=self.generator.get_state(), obs_quantum=self.obs_quantum,
                     frames=self.frames, rows=self.rows)  # how to read `obs` back (stored_observations)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved into a buffer of the same shape."""
        n = state["obs"].shape[0]
        if ("offset" in state) != (self.frames > 1):
            raise ValueError("replay state and this buffer store frame stacks differently (replay.frame_stack "
                             "differs from the checkpoint's run)")
        if state["obs"].shape[1:] != self.obs.shape[1:] or n > self.rows:
            raise ValueError(f"replay state of shape {tuple(state['obs'].shape)} does not fit {tuple(self.obs.shape)}")
        if state["obs"].dtype != self.obs.dtype:
            raise ValueError(f"replay state stores observations as {state['obs'].dtype}, this buffer as "
                             f"{self.obs.dtype} (replay.obs_storage differs from the checkpoint's run)")
        for k in self._TENSORS:
            getattr(self, k)[:n] = state[k].to(self.device)
        self.pos, self.size = int(state["pos"]), int(state["size"])
        self.generator.set_state(state["rng"])
        # collection restarts with reset envs: the last row ends its episodes (truncated, so its own next_obs still
        # bootstraps) and no n-step return runs on into the new episodes' rows; their frame stacks start afresh
        if self.size:
            self.done[(self.pos - 1) % self.rows] = True
        if self.frames > 1:
            self._last_next = None


def restored_buffer(state: dict, gamma: float = 1.0) -> ReplayBuffer:
    """A one-step ReplayBuffer holding a saved replay state (`ReplayBuffer.state_dict()`, e.g. from a checkpoint):
    its samples and observations come out as training saw them (float32, uint8 grids dequantized, frame stacks
    rebuilt)."""
    obs, quantum, frames = state["obs"], state.get("obs_quantum"), int(state.get("frames", 1))
    filled, num_envs, width = obs.shape
    rows = int(state.get("rows", filled + 1))  # the saved ring's size (older states: one row more than filled)
    buf = ReplayBuffer(rows * num_envs, num_envs, width * frames, gamma, device=obs.device,
                       obs_storage="uint8" if obs.dtype == torch.uint8 else "float32",
                       obs_quantum=1.0 if quantum is None and obs.dtype == torch.uint8 else quantum,
                       frame_stack=frames, obs_frames=frames)
    buf.load_state_dict({"rng": buf.generator.get_state(), **state})  # its sampling RNG, where saved, is not needed
    return buf


def stored_observations(state: dict, max_count: int | None = None,
                        generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """The observations a saved replay state holds, as `ReplayBuffer.observations` gives them: float32, frame
    stacks rebuilt."""
    return restored_buffer(state).observations(max_count, generator)


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016): P(i) ~ p_i^alpha, IS weights (N P(i))^-beta / max.

    `beta_end`: beta is annealed linearly from `beta` at the start of training to `beta_end` at its end
    (`set_progress`, which the data module calls with the env steps collected before sampling each round), as
    Schaul et al. anneal it to 1: the importance-sampling correction is full by the end of training, when unbiased
    updates matter most. None keeps beta constant. Beta follows the env-step counter, which checkpoints restore, so
    a resumed run samples with the beta it stopped at."""

    def __init__(self, *args, alpha: float = 0.6, beta: float = 0.4, beta_end: float | None = None,
                 eps: float = 1e-6, **kwargs) -> None:
        if kwargs.get("frame_stack", "auto") not in ("auto", 1):
            raise ValueError(f"replay.frame_stack={kwargs['frame_stack']} is not supported with replay=prioritized "
                             "(the oldest rows' stacks would need their priorities cleared); use 1")
        kwargs["frame_stack"] = 1
        super().__init__(*args, **kwargs)
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= beta <= 1.0:
            raise ValueError(f"replay.alpha={alpha} and replay.beta={beta} must lie in [0, 1]")
        if beta_end is not None and not 0.0 <= beta_end <= 1.0:
            raise ValueError(f"replay.beta_end={beta_end} must lie in [0, 1] (or be null: beta stays replay.beta)")
        self.alpha, self.beta, self.eps = alpha, beta, eps
        self.beta_start, self.beta_end = beta, beta_end
        self.tree = SumTree(self.rows * self.num_envs, self.device)
        self.max_priority = 1.0
        self._env_ids = torch.arange(self.num_envs, device=self.device)

    def _row_leaves(self, row: int) -> Tensor:
        return row * self.num_envs + self._env_ids

    def add(self, t: Transition) -> None:
        """Write a row; it gets zero priority until its n-step look-ahead is complete, then the max priority."""
        p = self.pos
        super().add(t)
        self.tree.update(self._row_leaves(p), torch.zeros(self.num_envs, device=self.device))
        if self.size >= self.n_step:
            complete = (p - self.n_step + 1) % self.rows
            full = torch.full((self.num_envs,), self.max_priority, device=self.device)
            self.tree.update(self._row_leaves(complete), full)

    def sample(self, batch_size: int, n_batches: int = 1) -> Batch:
        """Stratified proportional sampling of (n_batches, batch_size) with importance weights."""
        self._check(batch_size)
        total = self.tree.total
        u = torch.rand(n_batches, batch_size, generator=self.generator, device=self.device, dtype=torch.float64)
        mass = (torch.arange(batch_size, device=self.device) + u) * (total / batch_size)
        leaf = self.tree.find(mass.reshape(-1)).reshape(n_batches, batch_size)
        probs = self.tree.leaves(leaf) / total
        weights = (self.sampleable * probs).pow(-self.beta)
        weights = (weights / weights.amax(dim=-1, keepdim=True)).to(torch.float32)
        return self.gather(leaf // self.num_envs, leaf % self.num_envs, weights)

    def set_progress(self, fraction: float) -> None:
        """Anneal beta to `fraction` (clipped to [0, 1]) of the way from replay.beta to replay.beta_end."""
        if self.beta_end is not None:
            self.beta = self.beta_start + (self.beta_end - self.beta_start) * min(max(fraction, 0.0), 1.0)

    def update_priorities(self, indices: Tensor, td_errors: Tensor) -> None:
        """p_i <- (|td_i| + eps)^alpha for the sampled indices."""
        prio = (td_errors.detach().abs().to(torch.float64) + self.eps).pow(self.alpha)
        self.tree.update(indices.reshape(-1), prio.reshape(-1))
        self.max_priority = max(self.max_priority, float(prio.max()))

    def state_dict(self) -> dict:
        """Adds the sum tree and the running max priority."""
        state = super().state_dict()
        state.update(tree=self.tree.tree.clone(), max_priority=self.max_priority)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore buffer, tree and max priority."""
        super().load_state_dict(state)
        self.tree.tree.copy_(state["tree"])
        self.max_priority = float(state["max_priority"])
