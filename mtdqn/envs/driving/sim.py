"""`DrivingVecEnv`: N driving envs advanced together as torch tensors (Frenet-frame kinematic car).

The ego car lives in road (Frenet) coordinates: arc length `s` along the lane centre, lateral offset `d`
(positive = left), heading error `psi` against the road tangent and speed `v`. The road curvature is a sum of
two sinusoids in `s` drawn per episode, so it is evaluated in closed form anywhere without lookup tables.
All randomness comes from a counter-based hash of (env seed, episode, step, stream) (see `rng.py`), so env i's
episodes depend only on its seed `seed + i`, never on the number of envs beside it.

State is stored "struct of arrays": every field is a tensor whose last dim is the env index, so every
elementwise op runs over contiguous memory; per-slot fields (pedestrians) are (slots, N). The fields are row
views of one float32 and one int64 block, so resets and respawns replace all of a row's fields in one copy.

Domain randomization (`randomize={knob: (lo, hi)}`) draws the named knobs per env at every episode start from the
same counter-based RNG and keeps them as per-env state fields (`KNOB_FIELDS`); without it every knob is the
config's scalar and the step code is exactly the fixed-knob path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mtdqn.envs.driving import config as C
from mtdqn.envs.driving.config import RANDOMIZABLE, TASK_FEATURES, TASKS, DrivingConfig, check_randomization
from mtdqn.envs.driving.hazards import LIGHT0, PED0, STOP_HIGH, STOP_LOW, STOP_NAMES, stop_point
from mtdqn.envs.driving.rng import normals, seed_keys, uniforms
from mtdqn.types import StepResult

OBS_DIM = 26
N_ACTIONS = 9
KAPPA_SCALE = 0.03  # 1/m: the curvature preview is divided by this
OBS_NAMES: tuple[str, ...] = (
    "speed", "speed_limit", "lateral_offset", "lane_width", "heading_error",
    *(f"curvature_{int(x)}m" for x in C.PREVIEW_DISTANCES),
    *(f"ped{k}_{f}" for k in range(C.PED_SLOTS) for f in ("present", "ds", "dy", "vs", "vy")),
    "light_present", "light_distance", "light_red", "light_amber", "light_green", "light_time_to_change",
)  # fmt: skip
# raw value * OBS_SCALE = observation (units in docs/driving.md)
OBS_SCALE = np.array(
    [1 / C.V_MAX, 1 / C.V_MAX, 1.0, 1 / 5.0, 1 / C.HEADING_LIMIT] + [1 / KAPPA_SCALE] * 5
    + [1.0, 1 / C.PED_RANGE, 1 / 5.0, 1 / C.V_MAX, 0.5] * C.PED_SLOTS
    + [1.0, 1 / C.LIGHT_RANGE, 1.0, 1.0, 1.0, 1 / 20.0], dtype=np.float32,
)  # fmt: skip
OBS_LOW = np.array(
    [0.0, 0.0, -3.0, 0.0, -1.5] + [-1.0] * 5 + [0.0, -0.1, -2.0, -1.0, -1.0] * C.PED_SLOTS + [0.0] * 6,
    dtype=np.float32,
)
OBS_HIGH = np.array(
    [1.0, 1.0, 3.0, 1.0, 1.5] + [1.0] * 5 + [1.0, 1.0, 2.0, 1.0, 1.0] * C.PED_SLOTS + [1.0] * 6, dtype=np.float32
)
assert OBS_NAMES.index("ped0_present") == PED0 and OBS_NAMES.index("light_present") == LIGHT0  # hazards.py


def obs_bounds(config: DrivingConfig) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the observation under `config` (with the stop-point features when it has them)."""
    if not config.stop_feature:
        return OBS_LOW, OBS_HIGH
    return (np.concatenate([OBS_LOW, np.array(STOP_LOW, dtype=np.float32)]),
            np.concatenate([OBS_HIGH, np.array(STOP_HIGH, dtype=np.float32)]))  # fmt: skip


# continuous measurements get observation noise; presence flags and light one-hots do not
NOISE_MASK = np.array(
    [not (n.endswith("present") or n in ("light_red", "light_amber", "light_green")) for n in OBS_NAMES],
    dtype=np.float32,
)
# action a: steering = a // 3 in (left, straight, right), longitudinal = a % 3 in (brake, coast, throttle)
# why an episode terminated (before its time limit); `DrivingVecEnv.last_termination_cause` codes them 1..3
TERMINATION_CAUSES = ("offroad", "collision", "red_light")
ACTION_NAMES = tuple(f"{st}+{lo}" for st in ("left", "straight", "right") for lo in ("brake", "coast", "throttle"))

# counter-based draw layout: one word = 4 uniforms; an episode start draws words 0-6 at (episode, t=0)
_W_EPISODE, _W_PEDS, _W_LIGHT, _W_SLIP, _W_NOISE = 0, 4, 6, 7, 8
_W_KNOBS = 16  # domain randomization: 2 words at (episode, t=0), uniform RANDOMIZABLE.index(knob) per knob
_FAR = 1.0e6  # m
EGO_FIELDS = ("s", "d", "psi", "v", "half_w", "limit", "amp", "wavenum", "phase")  # road params are (2, N)
PED_FIELDS = ("ps", "py", "pvel", "ptrig", "pphase")  # each (PED_SLOTS, N)
LIGHT_FIELDS = ("ls", "loff")
INT_FIELDS = ("key", "episode", "t")
# per-env knob values under domain randomization (only the randomized knobs are present)
KNOB_FIELDS = {"obs_noise": "k_obs_noise", "slip": "k_slip", "steer_delay": "k_steer_delay",
               "curvature_range": "k_curvature_range", "pedestrian_rate": "k_ped_gap"}  # fmt: skip


class _Consts:
    """0-dim float32 tensors of the step's constants on one device: an op with a ready tensor operand skips
    the per-call wrapping of a Python scalar (same float32 value, so the same results)."""

    def __init__(self, device: torch.device, cfg: DrivingConfig, green: float) -> None:
        def c(x: float) -> Tensor:
            return torch.tensor(x, dtype=torch.float32, device=device)

        self.zero, self.one, self.two, self.mone = c(0.0), c(1.0), c(2.0), c(-1.0)
        self.dt, self.half = c(C.DT), c(0.5)
        self.offroad = c(C.OFFROAD_MARGIN)
        self.heading = c(C.HEADING_LIMIT)
        self.w_speed, self.w_lat = c(C.W_SPEEDING), c(C.W_LATERAL)
        self.pen_off = c(C.PENALTY_OFFROAD)
        self.pen_hit, self.pen_red = c(cfg.collision_penalty), c(cfg.red_light_penalty)
        self.curb = c(C.CURB_OFFSET)
        self.hit_s, self.hit_y = c(C.CAR_HALF_LENGTH + C.PED_RADIUS), c(C.CAR_HALF_WIDTH + C.PED_RADIUS)
        self.behind, self.ped_range, self.light_range = c(-5.0), c(C.PED_RANGE), c(C.LIGHT_RANGE)
        self.cycle, self.green_end, self.amber_end = c(cfg.light_cycle), c(green), c(green + C.AMBER_TIME)
        self.ped_ahead = c(C.PED_SPAWN_AHEAD)


class DrivingVecEnv:
    """Batched driving simulator implementing the `TensorVecEnv` protocol (same-step autoreset).

    The state lives in two blocks, float32 (F, N) and int64 (I, N); the state dict holds views of their rows,
    so a whole row set is replaced (episode reset, respawn) with one index_copy_ and the step updates the
    fields in place.
    """

    def __init__(self, task: str, num_envs: int, device: str | torch.device = "cpu",
                 config: DrivingConfig | None = None, reset_mode: str | None = None,
                 randomize: dict[str, tuple[float, float]] | None = None,
                 render_mode: str | None = None) -> None:  # fmt: skip
        if render_mode not in (None, "rgb_array"):  # it always draws (render(i)); the argument is the protocol's
            raise ValueError(f"render_mode={render_mode!r} is not one of (None, 'rgb_array')")
        if task not in TASKS:
            raise ValueError(f"unknown driving task {task!r}; valid tasks: {', '.join(TASKS)}")
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.task, self.num_envs, self.device = task, int(num_envs), torch.device(device)
        self.config = config if config is not None else DrivingConfig()
        if not isinstance(self.config, DrivingConfig):
            raise ValueError(f"config must be a DrivingConfig, got {type(self.config).__name__}")
        self._stop = self.config.stop_feature  # append stop_point(obs) to every observation
        self._stop_only = self.config.stop_only  # ... and zero the hazards' own slots after computing it
        self.obs_dim, self.n_actions = OBS_DIM + (len(STOP_NAMES) if self._stop else 0), N_ACTIONS
        self.obs_names = OBS_NAMES + (STOP_NAMES if self._stop else ())
        self.has_peds, self.has_lights, _ = TASK_FEATURES[task]
        self.max_episode_steps = self.config.episode_steps(task)
        # "subset": rebuild only the rows that need it (index_copy_; cheapest on CPU, syncs on CUDA);
        # "masked": recompute all rows and torch.where them in (no host sync; default off-CPU)
        self.reset_mode = reset_mode or ("subset" if self.device.type == "cpu" else "masked")
        if self.reset_mode not in ("subset", "masked"):
            raise ValueError(f"reset_mode must be 'subset' or 'masked', got {self.reset_mode!r}")
        dev = self.device
        self.obs_low, self.obs_high = torch.as_tensor(OBS_LOW, device=dev), torch.as_tensor(OBS_HIGH, device=dev)
        self.observation_low, self.observation_high = obs_bounds(self.config)  # of the full observation (numpy)
        self._scale = torch.as_tensor(OBS_SCALE, device=dev)
        # (OBS_DIM, obs_dim): the stop point's columns (if any) come out of the matmul as 0 and are filled after it
        self._scale_mat = torch.diag(self._scale)
        if self._stop:
            self._scale_mat = torch.cat([self._scale_mat, torch.zeros(OBS_DIM, len(STOP_NAMES), device=dev)], 1)
        self._eye = torch.eye(OBS_DIM, self.obs_dim, device=dev)
        self._noise_col = (torch.as_tensor(NOISE_MASK, device=dev) * self.config.obs_noise).unsqueeze(1)
        steer = torch.tensor([C.STEER_CURVATURE, 0.0, -C.STEER_CURVATURE]).repeat_interleave(3)
        action_table = torch.stack([steer, torch.tensor(C.ACCEL).repeat(3)]).to(dev)  # (2, 9)
        # (steer, accel * DT) per action: the velocity increment in float32 exactly as accel * C.DT gives it
        self._action_table_dt = torch.stack([action_table[0], action_table[1] * C.DT])
        self._preview = torch.tensor(C.PREVIEW_DISTANCES, device=dev).unsqueeze(1)
        self._green = 0.5 * (self.config.light_cycle - C.AMBER_TIME)
        self._k = _Consts(dev, self.config, self._green)
        self._t_limit = torch.tensor(self.max_episode_steps, dtype=torch.int64, device=dev)
        rate = self.config.pedestrian_rate
        self._ped_gap = 200.0 / rate if rate > 0 else _FAR
        # domain randomization: {knob: (lo, hi)} drawn per env per episode (overrides the config's value)
        self.randomize = check_randomization(randomize)
        self._noise_mask = torch.as_tensor(NOISE_MASK, device=dev).unsqueeze(1)
        lo_hi = self.randomize.get("steer_delay")
        self._delay_slots = int(lo_hi[1]) if lo_hi else self.config.steer_delay  # length of the steering buffer
        self._build_layout()
        self._raw_buf: Tensor | None = None  # (OBS_DIM, N) scratch of the full-batch observation
        self._scratch: dict[str, Tensor] = {}
        # curvature at each env's current s, taken from the last step's observation (preview distance 0 is the
        # same computation); None: unknown (after reset / set_state, or with observation noise / masked resets)
        self._kappa: Tensor | None = None
        noise_free = self.config.obs_noise == 0 and "obs_noise" not in self.randomize
        self._cache_kappa = self.reset_mode == "subset" and noise_free
        self._st: dict[str, Tensor] = {}
        self._fb = self._ib = torch.empty(0)
        self._seeded = False
        # opt-in (evaluation): record per step which event ended each terminated episode, see TERMINATION_CAUSES
        self.track_causes = False
        self.last_termination_cause: Tensor | None = None

    termination_causes = TERMINATION_CAUSES

    def set_track_causes(self, on: bool) -> None:
        """Record `last_termination_cause` (N,) int64 at every step: 0 none, k = TERMINATION_CAUSES[k - 1]."""
        self.track_causes = bool(on)
        self.last_termination_cause = None

    def _build_layout(self) -> None:
        """Rows of every state field in the float / int blocks, and the (original) order of the state dict."""
        order = ["key", "episode", "t", *EGO_FIELDS]
        ints = ["key", "episode", "t"]
        floats = [("s", 1), ("d", 1), ("psi", 1), ("v", 1), ("limit", 1), ("half_w", 1),  # v, limit adjacent
                  ("amp", 2), ("wavenum", 2), ("phase", 2)]  # fmt: skip
        for name in self.randomize:
            field = KNOB_FIELDS[name]
            order.append(field)
            if name == "steer_delay":
                ints.append(field)
            else:
                floats.append((field, 1))
        if self._delay_slots > 0:
            order.append("steer_buf")
            floats.append(("steer_buf", self._delay_slots))
        if self.has_peds:
            order += PED_FIELDS
            floats += [(f, C.PED_SLOTS) for f in PED_FIELDS]  # contiguous: the ped block is (5, slots, N)
        if self.has_lights:
            order += LIGHT_FIELDS
            floats += [(f, 1) for f in LIGHT_FIELDS]
        rows, r = {}, 0
        for name, count in floats:
            rows[name] = (r, count)
            r += count
        self._frows, self._n_float = rows, r
        self._irows = {name: i for i, name in enumerate(ints)}
        self._order = order
        self._ped0 = rows["ps"][0] if self.has_peds else 0
        self._light0 = rows["ls"][0] if self.has_lights else 0
        # views of a state: (name, source, index) with source 0: int rows, 1: float rows, 2: float groups
        self._group_sizes = [count for _, count in floats]
        group_of = {name: g for g, (name, _) in enumerate(floats)}
        self._plan = [
            (name, 0, self._irows[name]) if name in self._irows
            else (name, 1, rows[name][0]) if rows[name][1] == 1 and name != "steer_buf"
            else (name, 2, group_of[name])
            for name in order
        ]  # fmt: skip
        self._build_affine()

    def _build_affine(self) -> None:
        """Episode-start fields as ((u[SEL] * A) + B) * C per float-block row (u: the 28 episode uniforms), plus
        two extra rows (e1, 1 - e1) for the curvature split. Each row is the same float32 op sequence as the
        field's formula (x * 1, x + 0 with x > 0 and x * 0 + 0 with x > 0 are exact), so results are unchanged;
        rows that need more (v, amp, wavenum, peds, ls) hold an intermediate that _fresh finishes."""
        (lo_w, hi_w), (lo_v, hi_v) = C.LANE_WIDTH_RANGE, C.SPEED_LIMIT_RANGE
        (lo_p, hi_p), (lo_t, hi_t), (lo_g, hi_g) = C.PED_SPEED_RANGE, C.PED_TRIGGER_RANGE, C.LIGHT_GAP_RANGE
        p, lt = 4 * _W_PEDS, 4 * _W_LIGHT
        spec = {  # field: ([u row per field row], A, B, C)
            "d": ([10], 1.0, -0.5, 1.0), "psi": ([11], 1.0, -0.5, 0.2), "v": ([12], 0.7, 0.3, 1.0),
            "limit": ([9], hi_v - lo_v, lo_v, 1.0), "half_w": ([8], hi_w - lo_w, lo_w, 0.5),
            "amp": ([0, 0], 0.7, 0.3, 1.0), "wavenum": ([4, 5], 220.0, 80.0, 1.0),
            "phase": ([6, 7], 2 * math.pi, 0.0, 1.0),
            "ps": ([p, p + 1], 1.0, 0.0, 1.0), "pvel": ([p + 4, p + 5], hi_p - lo_p, lo_p, 1.0),
            "ptrig": ([p + 6, p + 7], hi_t - lo_t, lo_t, 1.0),
            "ls": ([lt], hi_g - lo_g, lo_g, 1.0), "loff": ([lt + 1], self.config.light_cycle, 0.0, 1.0),
        }  # fmt: skip
        sel, a, b, c = [0] * self._n_float, [0.0] * self._n_float, [0.0] * self._n_float, [1.0] * self._n_float
        for name, (r, count) in self._frows.items():
            if name in spec:
                rows, a_, b_, c_ = spec[name]
                for j in range(count):
                    sel[r + j], a[r + j], b[r + j], c[r + j] = rows[j], a_, b_, c_
        sel += [1, 1]  # split: e1 and 1 - e1
        a += [1.0, -1.0]
        b += [0.0, 1.0]
        c += [1.0, 1.0]
        dev = self.device
        self._aff_sel = torch.tensor(sel, dtype=torch.int64, device=dev)
        self._aff_a, self._aff_b, self._aff_c = (torch.tensor(x, dtype=torch.float32, device=dev).unsqueeze(1)
                                                 for x in (a, b, c))  # fmt: skip
        cr = self.config.curvature_range
        self._cr = torch.tensor(cr, dtype=torch.float32, device=dev)
        self._gap_t = torch.tensor(self._ped_gap, dtype=torch.float32, device=dev)

    def _views(self, fb: Tensor, ib: Tensor) -> dict[str, Tensor]:
        """The state dict of views into the blocks fb (F, R) and ib (I, R)."""
        src = (ib.unbind(0), fb.unbind(0), fb.split(self._group_sizes))
        return {name: src[kind][i] for name, kind, i in self._plan}

    def _tmp(self, slot: str, like: Tensor) -> Tensor:
        """An uninitialized float tensor shaped like `like`: a reused buffer per slot for full-batch shapes
        (each slot's value only lives within one step), a new one otherwise."""
        if like.shape[-1] != self.num_envs:
            return torch.empty_like(like)
        buf = self._scratch.get(slot)
        if buf is None or buf.shape != like.shape or buf.device != like.device:
            buf = self._scratch[slot] = torch.empty_like(like)
        return buf

    # ------------------------------------------------------------------ protocol
    def reset(self, seed: int | None = None) -> Tensor:
        """Reset all envs; env i is seeded with seed + i (None: next episodes of the current seeds)."""
        n, dev = self.num_envs, self.device
        if seed is not None or not self._seeded:
            if seed is None:
                seed = int(np.random.SeedSequence().entropy % (1 << 62))
            seeds = int(seed) + torch.arange(n, device=dev, dtype=torch.int64)
            key, episode = seed_keys(seeds), torch.zeros(n, device=dev, dtype=torch.int64)
            self._seeded = True
        else:
            key, episode = self._st["key"], self._st["episode"] + 1
        ib = torch.zeros(len(self._irows), n, device=dev, dtype=torch.int64)
        ib[0], ib[1] = key, episode
        self._st, self._fb, self._ib = self._fresh(ib)
        self._kappa = None
        return self._observe(self._st)

    def step(self, actions: Tensor) -> StepResult:
        """Advance all envs one step (dt = 0.1 s) with int64 actions (N,); finished envs autoreset."""
        if not self._seeded:
            raise RuntimeError("call reset() before step()")
        st = self._st
        actions = torch.as_tensor(actions, device=self.device).long()
        reward, term, ph = self._advance(st, actions)  # term: float 0/1
        terminated = term.bool()
        at_limit = torch.ge(st["t"], self._t_limit)
        truncated = at_limit & ~terminated
        pre = self._observe_pre(st, ph, scratch=True)
        next_obs = self._finish_obs(pre)
        kappa = pre[5].clone() if self._cache_kappa else None  # raw curvature at preview distance 0
        done = at_limit | terminated
        if self.reset_mode == "masked":
            ib = self._ib.clone()
            ib[1] += 1
            fresh, fb, ib = self._fresh(ib)
            self._fb.copy_(torch.where(done, fb, self._fb))
            self._ib.copy_(torch.where(done, ib, self._ib))
            obs = torch.where(done.unsqueeze(1), self._observe(fresh), next_obs)
        else:
            idx = done.nonzero().squeeze(1)
            if idx.shape[0] == 0:
                obs = next_obs
            else:
                ib = self._ib.index_select(1, idx)
                ib[1] += 1
                fresh, fb, ib = self._fresh(ib)
                self._fb.index_copy_(1, idx, fb)
                self._ib.index_copy_(1, idx, ib)
                pre = self._observe_pre(fresh)
                obs = next_obs.index_copy(0, idx, self._finish_obs(pre))
                if kappa is not None:
                    kappa.index_copy_(0, idx, pre[5])
        self._kappa = kappa
        return StepResult(next_obs, reward, terminated, truncated, obs)

    def render(self, i: int = 0):
        """A top-down uint8 RGB picture of env `i` (numpy, see render.py)."""
        from mtdqn.envs.driving.render import render_env

        return render_env(self, i)

    def close(self) -> None:
        """Release the state tensors."""
        self._st = {}
        self._fb = self._ib = torch.empty(0)
        self._raw_buf, self._kappa = None, None

    # ------------------------------------------------------------------ test / render helpers
    def get_state(self) -> dict[str, Tensor]:
        """A copy of the state tensors (see EGO_FIELDS, PED_FIELDS, LIGHT_FIELDS, INT_FIELDS; docs/driving.md)."""
        return {k: v.clone() for k, v in self._st.items()}

    def set_state(self, **fields: Tensor | float) -> Tensor:
        """Overwrite state fields (values broadcast to the field's shape) for tests; returns the new obs."""
        for name, value in fields.items():
            if name not in self._st:
                raise ValueError(f"unknown state field {name!r} for task {self.task!r}; valid: {sorted(self._st)}")
            old = self._st[name]
            old.copy_(torch.as_tensor(value, dtype=old.dtype, device=old.device).expand_as(old))
        self._kappa = None
        return self._observe(self._st)

    def observe(self) -> Tensor:
        """The current observation (N, obs_dim) without stepping."""
        return self._observe(self._st)

    def curvature(self, s: Tensor, st: dict[str, Tensor] | None = None) -> Tensor:
        """Road curvature (1/m) at arc lengths s (..., N) of each env's road."""
        st = self._st if st is None else st
        shape = (2,) + (1,) * (s.dim() - 1) + (s.shape[-1],)
        arg = st["wavenum"].view(shape) * s + st["phase"].view(shape)
        return (torch.sin(arg) * st["amp"].view(shape)).sum(0)

    def _cycle_time(self, st: dict[str, Tensor]) -> Tensor:
        """Time (s) into the current cycle of each env's next light."""
        return torch.remainder(st["t"] * self._k.dt + st["loff"], self._k.cycle)

    def light_phase(self, st: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(time to the next change in s, red, amber, green) of each env's next light."""
        st = self._st if st is None else st
        cycle, green_end = self.config.light_cycle, self._green
        amber_end = green_end + C.AMBER_TIME
        ph = self._cycle_time(st)
        red, green = ph >= amber_end, ph < green_end
        amber = ~(red | green)
        ttc = torch.where(green, green_end - ph, torch.where(amber, amber_end - ph, cycle - ph))
        return ttc, red, amber, green

    # ------------------------------------------------------------------ episode start / respawns
    def _fresh(self, ib: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Initial state of new episodes for the rows of the int block ib (I, R) whose key and episode rows are
        set (the rest is overwritten, in place): (state dict of views, float block, int block)."""
        k = self._k
        key, episode = ib[0], ib[1]
        u = uniforms(key, episode, 0, _W_EPISODE, _W_SLIP)  # (28, n): words 0-3 road/ego, 4-5 peds, 6 light
        # every simple field in one go (see _build_affine); s, pphase and steer_buf come out 0
        y = u.index_select(0, self._aff_sel).mul_(self._aff_a).add_(self._aff_b).mul_(self._aff_c)
        fb, split = y[: self._n_float], y[self._n_float :]
        ib[2].zero_()
        st = self._views(fb, ib)
        knobs = self._draw_knobs(key, episode) if self.randomize else {}
        for name, value in knobs.items():
            st[name].copy_(value)
        # amp = curvature_range * (0.3 + 0.7 e0) * (e1, 1 - e1) * random signs
        amp = st["amp"].mul_(knobs.get("k_curvature_range", self._cr)).mul_(split)
        amp.mul_(torch.where(u[2:4] < 0.5, k.mone, k.one))
        st["v"].mul_(st["limit"])
        st["wavenum"].reciprocal_().mul_(2 * math.pi)  # == (2 pi) / (80 + 220 e), as Tensor.__rtruediv__
        if self.has_peds:
            self._finish_peds(st, u[4 * _W_PEDS : 4 * _W_LIGHT], st.get("k_ped_gap", self._gap_t))
        if self.has_lights:
            st["ls"].add_(C.LIGHT_FIRST)  # LIGHT_FIRST + gap
        return st, fb, ib

    def _finish_peds(self, st: dict[str, Tensor], u: Tensor, gap: Tensor) -> None:
        """Finish new pedestrians whose ps rows hold u[0:2], pvel rows the speed, ptrig and pphase done."""
        k = self._k
        ps = st["ps"].log_().mul_(gap)
        torch.sub(k.ped_ahead, ps, out=ps)  # PED_SPAWN_AHEAD - gap * log(u); the ego is at s = 0
        ps.masked_fill_(gap >= _FAR, _FAR)  # pedestrian_rate 0: none (60 - 1e6 log(u) put one within reach now and then)
        side = torch.where(u[2:4] < 0.5, k.mone, k.one)
        torch.mul(side, st["half_w"] + k.curb, out=st["py"])
        st["pvel"].mul_(side.neg_())

    def _draw_knobs(self, key: Tensor, episode: Tensor) -> dict[str, Tensor]:
        """Per-env values of the randomized knobs for new episodes: uniform in [lo, hi] (integers for
        steer_delay); pedestrian_rate is kept as the mean spawn gap 200 / rate (m)."""
        u = uniforms(key, episode, 0, _W_KNOBS, 2)  # (8, n); knob i always uses row i
        out = {}
        for name, (lo, hi) in self.randomize.items():
            x = u[RANDOMIZABLE.index(name)]
            if name == "steer_delay":
                out[KNOB_FIELDS[name]] = (lo + (hi - lo + 1) * x).floor().long().clamp_(max=int(hi))
            elif name == "pedestrian_rate":
                rate = lo + (hi - lo) * x
                out[KNOB_FIELDS[name]] = torch.where(rate > 0, 200.0 / rate.clamp(min=1e-6), _FAR)
            else:
                out[KNOB_FIELDS[name]] = lo + (hi - lo) * x
        return out

    def knob_values(self) -> dict[str, Tensor]:
        """Each env's current value (N,) of every DrivingConfig knob that domain randomization touches."""
        st, n, out = self._st, self.num_envs, {}
        for name in RANDOMIZABLE:
            field = KNOB_FIELDS[name]
            if field not in st:
                out[name] = torch.full((n,), getattr(self.config, name), device=self.device)
            elif name == "pedestrian_rate":
                out[name] = torch.where(st[field] >= _FAR, 0.0, 200.0 / st[field])
            else:
                out[name] = st[field].clone()
        return out

    def _spawn_peds(self, st: dict[str, Tensor], s: Tensor | None, u: Tensor | None = None,
                    out: Tensor | None = None) -> Tensor:  # fmt: skip
        """New waiting pedestrians (one per slot) ahead of s (R,; None: at s = 0), drawn at each row's
        (episode, t); returns the ped block (5 * PED_SLOTS, R) in PED_FIELDS order (written into `out`)."""
        k = self._k
        if u is None:
            u = uniforms(st["key"], st["episode"], st["t"], _W_PEDS, 2)  # (8, R): 4 features x 2 slots
        n = u.shape[1]
        if out is None:
            out = torch.empty(5 * C.PED_SLOTS, n, device=u.device)
        ps, py, pvel, ptrig, pphase = out.view(5, C.PED_SLOTS, n).unbind(0)
        gap = st.get("k_ped_gap", self._ped_gap)
        ahead = torch.rsub(gap * torch.log(u[0:2]), k.ped_ahead)
        if isinstance(gap, Tensor):  # pedestrian_rate 0 (a randomized range reaching 0): none, as in _finish_peds
            ahead.masked_fill_(gap >= _FAR, _FAR)
        elif gap >= _FAR:
            ahead.fill_(_FAR)
        if s is None:
            ps.copy_(ahead)  # 0 + x == x (x > 0)
        else:
            torch.add(s, ahead, out=ps)
        side = torch.where(u[2:4] < 0.5, k.mone, k.one)
        (lo_p, hi_p), (lo_t, hi_t) = C.PED_SPEED_RANGE, C.PED_TRIGGER_RANGE
        torch.mul(side, st["half_w"] + k.curb, out=py)
        torch.mul(side.neg_(), u[4:6] * (hi_p - lo_p) + lo_p, out=pvel)
        torch.add(u[6:8] * (hi_t - lo_t), lo_t, out=ptrig)
        pphase.zero_()
        return out

    def _spawn_light(self, ls_old: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Position (m) and phase offset (s) of the light after `ls_old` from uniforms u (>= 2, R)."""
        lo, hi = C.LIGHT_GAP_RANGE
        return ls_old + (lo + (hi - lo) * u[0]), self._k.cycle * u[1]

    # ------------------------------------------------------------------ dynamics
    def _advance(self, st: dict[str, Tensor], actions: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Apply actions to the state (in place); returns (reward, terminated as float 0/1, light phase or None)."""
        cfg, k = self.config, self._k
        t = st["t"]
        t += 1
        steer, accel_dt = self._action_table_dt.index_select(1, actions)
        if self.randomize:
            steer = self._perturb_steering_per_env(st, steer, t)
        else:
            if cfg.steer_delay > 0:
                buf = st["steer_buf"]
                full = torch.cat([buf, steer.unsqueeze(0)])
                steer = full[0]
                buf.copy_(full[1:])
            if cfg.slip > 0:
                steer = steer.masked_fill(uniforms(st["key"], st["episode"], t, _W_SLIP, 1)[0] < cfg.slip, 0.0)
        s, d, psi, v = st["s"], st["d"], st["psi"], st["v"]
        half_w, limit = st["half_w"], st["limit"]
        kappa = self._curvature_now(st, s) if self._kappa is None else self._kappa
        self._kappa = None
        v.add_(accel_dt).clamp_(0.0, C.V_MAX)
        sdot = torch.mul(v, torch.cos(psi)).div_(torch.sub(k.one, d * kappa))
        s.add_(sdot * k.dt)
        dpsi = torch.mul(v, steer).sub_(kappa.mul_(sdot)).mul_(k.dt)  # kappa no longer needed
        d.add_(torch.mul(v, k.dt).mul_(torch.sin(psi)))  # uses the old psi
        psi.add_(dpsi)
        # terminations as float 0/1 masks (comparisons into float outputs are far cheaper than bool ones)
        offroad = torch.gt(d.abs(), half_w + k.offroad, out=self._tmp("off", d))
        offroad = torch.maximum(offroad, torch.gt(psi.abs(), k.heading, out=self._tmp("off2", psi)))
        speeding = torch.sub(v, limit).relu_().mul_(k.w_speed)
        reward = torch.sub(sdot, speeding).div_(limit)
        reward.sub_(torch.div(d, half_w).square_().mul_(k.w_lat))
        reward.sub_(offroad * k.pen_off)
        term, ph = offroad, None
        # cause codes when tracked: the last listed event wins when several happen in the same step
        cause = offroad.long() if self.track_causes else None
        if self.has_peds:
            hit = self._advance_peds(st, s, d)
            reward.sub_(hit * k.pen_hit)
            term = torch.maximum(term, hit)
            if cause is not None:
                cause = torch.where(hit.bool(), 2, cause)
        if self.has_lights:
            ran_red, ph = self._advance_lights(st, s)
            reward.sub_(ran_red * k.pen_red)
            term = torch.maximum(term, ran_red)
            if cause is not None:
                cause = torch.where(ran_red.bool(), 3, cause)
        self.last_termination_cause = cause
        return reward, term, ph

    def _curvature_now(self, st: dict[str, Tensor], s: Tensor) -> Tensor:
        """curvature(s) for s (N,): the same ops, on fresh temporaries."""
        arg = torch.mul(st["wavenum"], s).add_(st["phase"]).sin_().mul_(st["amp"])
        return arg.sum(0)

    def _perturb_steering_per_env(self, st: dict[str, Tensor], steer: Tensor, t: Tensor) -> Tensor:
        """Steering delay and slip with per-env knob values (domain randomization; same draws as fixed knobs)."""
        cfg, slots = self.config, self._delay_slots
        if slots > 0:  # buffer of the last `slots` commands, newest last: a delay of k reads full[slots - k]
            full = torch.cat([st["steer_buf"], steer.unsqueeze(0)])
            delay = st.get("k_steer_delay")
            if delay is None:
                steer = full[0]
            else:
                steer = full.gather(0, (slots - delay).unsqueeze(0)).squeeze(0)
            st["steer_buf"].copy_(full[1:])
        slip = st.get("k_slip", cfg.slip)
        if "k_slip" in st or cfg.slip > 0:
            steer = steer.masked_fill(uniforms(st["key"], st["episode"], t, _W_SLIP, 1)[0] < slip, 0.0)
        return steer

    def _advance_peds(self, st: dict[str, Tensor], s: Tensor, d: Tensor) -> Tensor:
        """Move pedestrians, respawn the ones 5 m behind the car; returns the collision mask (N,) as float 0/1."""
        k = self._k
        ps, py, pvel, pphase = st["ps"], st["py"], st["pvel"], st["pphase"]
        ds = ps - s
        # waiting (0) -> walking (1) once the ego is within the trigger distance
        pphase.addcmul_(torch.eq(pphase, k.zero, out=self._tmp("p1", ds)),
                        torch.lt(ds, st["ptrig"], out=self._tmp("p2", ds)))  # fmt: skip
        walking = torch.eq(pphase, k.one, out=self._tmp("p3", ds))
        py.addcmul_(pvel * k.dt, walking)  # + 0 where not walking (py is never -0)
        curb = st["half_w"] + k.curb
        # walking (1) -> across (2) once beyond the far curb
        pphase.addcmul_(walking, torch.gt(py * pvel, curb * pvel.abs(), out=self._tmp("p1", ds)))
        hit = torch.lt(ds.abs(), k.hit_s, out=self._tmp("p2", ds))
        hit.mul_(torch.lt((py - d).abs_(), k.hit_y, out=self._tmp("p3", ds)))
        passed = torch.lt(ds, k.behind, out=ds)
        block = self._fb[self._ped0 : self._ped0 + 5 * C.PED_SLOTS]
        if self.reset_mode == "masked":
            new = self._spawn_peds(st, s).view(5, C.PED_SLOTS, -1)
            old = block.view(5, C.PED_SLOTS, -1)
            block.copy_(torch.where(passed.bool(), new, old).view_as(block))
        else:
            idx = passed.amax(0).nonzero().squeeze(1)
            if idx.shape[0] > 0:
                ints = self._ib[:3].index_select(1, idx)
                sub = dict(zip(("key", "episode", "t"), ints.unbind(0), strict=True))
                sub["half_w"] = st["half_w"].index_select(0, idx)
                if "k_ped_gap" in st:
                    sub["k_ped_gap"] = st["k_ped_gap"].index_select(0, idx)
                new = self._spawn_peds(sub, s.index_select(0, idx)).view(5, C.PED_SLOTS, -1)
                old = block.index_select(1, idx).view(5, C.PED_SLOTS, -1)
                keep = passed.index_select(1, idx).bool()
                block.index_copy_(1, idx, torch.where(keep, new, old).view(5 * C.PED_SLOTS, -1))
        return hit.amax(0)

    def _advance_lights(self, st: dict[str, Tensor], s: Tensor) -> tuple[Tensor, Tensor]:
        """Check stop-line crossings against the light state, respawn passed lights; returns (red-run mask as
        float 0/1, the light phase of the current lights (after respawns) for the observation)."""
        k = self._k
        crossed = torch.ge(s, st["ls"], out=self._tmp("l1", s))
        ph = self._cycle_time(st)
        ran_red = torch.ge(ph, k.amber_end, out=self._tmp("l2", s)).mul_(crossed)
        block = self._fb[self._light0 : self._light0 + 2]  # (ls, loff)
        if self.reset_mode == "masked":
            u = uniforms(st["key"], st["episode"], st["t"], _W_LIGHT, 1)
            block.copy_(torch.where(crossed.bool(), torch.stack(self._spawn_light(st["ls"], u)), block))
            return ran_red, self._cycle_time(st)
        idx = crossed.nonzero().squeeze(1)
        if idx.shape[0] > 0:
            key, episode, t = self._ib[:3].index_select(1, idx).unbind(0)
            ls, loff = self._spawn_light(st["ls"].index_select(0, idx), uniforms(key, episode, t, _W_LIGHT, 1))
            block.index_copy_(1, idx, torch.stack([ls, loff]))
            ph.index_copy_(0, idx, torch.remainder(t * k.dt + loff, k.cycle))
        return ran_red, ph

    # ------------------------------------------------------------------ observation
    def _observe(self, st: dict[str, Tensor]) -> Tensor:
        """The normalized observation (R, OBS_DIM) of the rows in `st` (layout: OBS_NAMES)."""
        return self._finish_obs(self._observe_pre(st))

    def _observe_pre(self, st: dict[str, Tensor], ph: Tensor | None = None, scratch: bool = False) -> Tensor:
        """(OBS_DIM, R): the raw features of the rows in `st` (noise-free) or the final observation with noise,
        before the transpose; `ph`: the light phase (_cycle_time) when already known; scratch: build it in a
        reused buffer (all N rows; only valid until the next call with scratch)."""
        k = self._k
        s, d, psi, v, half_w = st["s"], st["d"], st["psi"], st["v"], st["half_w"]
        n = s.shape[0]
        if scratch:
            if self._raw_buf is None or self._raw_buf.shape[1] != n or self._raw_buf.device != s.device:
                self._raw_buf = torch.empty(OBS_DIM, n, device=s.device)
            raw = self._raw_buf
        else:
            raw = torch.empty(OBS_DIM, n, device=s.device)
        raw[0].copy_(v)
        raw[1].copy_(st["limit"])
        torch.div(d, half_w, out=raw[2]).clamp_(-3.0, 3.0)
        torch.mul(half_w, k.two, out=raw[3])
        raw[4].copy_(psi)
        arg = torch.mul(st["wavenum"].unsqueeze(1), s + self._preview).add_(st["phase"].unsqueeze(1))
        torch.sum(arg.sin_().mul_(st["amp"].unsqueeze(1)), 0, out=raw[5:10])
        if self.has_peds:
            self._observe_peds(st, s, d, psi, v, raw[10 : 10 + 5 * C.PED_SLOTS])
        else:
            raw[10 : 10 + 5 * C.PED_SLOTS].zero_()
        if self.has_lights:
            self._observe_light(st, s, raw[OBS_DIM - 6 :], ph)
        else:
            raw[OBS_DIM - 6 :].zero_()
        noise_std = st.get("k_obs_noise")
        if noise_std is None and self.config.obs_noise == 0:
            return raw  # scaled by the mm in _finish_obs
        noise_col = self._noise_col if noise_std is None else self._noise_mask * noise_std  # (OBS_DIM, 1 or R)
        obs = raw * self._scale.unsqueeze(1)
        obs = obs + normals(st["key"], st["episode"], st["t"], _W_NOISE, OBS_DIM) * noise_col
        return torch.maximum(torch.minimum(obs, self.obs_high.unsqueeze(1)), self.obs_low.unsqueeze(1))

    def _finish_obs(self, pre: Tensor) -> Tensor:
        """(R, obs_dim) observation from the (OBS_DIM, R) matrix of _observe_pre (one BLAS call: transpose, and
        scale where the noise-free path left it unscaled; then the stop point, with stop_feature)."""
        noisy = "k_obs_noise" in self._frows or self.config.obs_noise != 0
        obs = torch.mm(pre.t(), self._eye if noisy else self._scale_mat)
        if self._stop:
            stop_point(obs, out=obs[:, OBS_DIM:])
            if self._stop_only:
                obs[:, PED0:OBS_DIM].zero_()
        return obs

    def _observe_peds(self, st: dict[str, Tensor], s: Tensor, d: Tensor, psi: Tensor, v: Tensor,
                      out: Tensor) -> None:  # fmt: skip
        """Write the (10, R) raw ped features into `out`: per slot [present, ds (m), dy (m), relative
        longitudinal speed (m/s), lateral speed], zero where not present."""
        k = self._k
        f = out.view(C.PED_SLOTS, 5, -1)
        ds = torch.sub(st["ps"], s, out=f[:, 1])
        vis = torch.ge(ds, k.behind, out=self._tmp("o1", st["ps"]))
        vis.mul_(torch.le(ds, k.ped_range, out=self._tmp("o2", vis)))
        torch.sub(st["py"], d, out=f[:, 2])
        torch.mul(v.neg().expand_as(ds), torch.cos(psi), out=f[:, 3])
        # where(walking, pvel, +0.0): 0 + pvel * w (w in {0, 1}) turns -0.0 into +0.0
        torch.addcmul(k.zero, st["pvel"], torch.eq(st["pphase"], k.one, out=self._tmp("o2", vis)), out=f[:, 4])
        f[:, 1:].mul_(vis.unsqueeze(1))
        f[:, 0].copy_(vis)  # vis * vis == vis

    def _observe_light(self, st: dict[str, Tensor], s: Tensor, out: Tensor, ph: Tensor | None) -> None:
        """Write the (6, R) raw light features into `out`: [present, distance (m), red, amber, green, time to
        change (s, <= 20)], zero where not present."""
        k = self._k
        dist = torch.sub(st["ls"], s, out=out[1])
        vis = torch.le(dist, k.light_range, out=self._tmp("o3", dist))
        if ph is None:
            ph = self._cycle_time(st)
        red = torch.ge(ph, k.amber_end, out=out[2])
        green = torch.lt(ph, k.green_end, out=out[4])
        torch.sub(k.one, red, out=out[3]).sub_(green)  # amber
        # time to change: (end of the current phase) - ph; the end picked exactly by the 0/1 masks
        end = torch.mul(green, k.green_end).addcmul_(out[3], k.amber_end).addcmul_(red, k.cycle)
        torch.sub(end, ph, out=out[5]).clamp_(max=20.0)
        out[1:].mul_(vis)
        out[0].copy_(vis)
