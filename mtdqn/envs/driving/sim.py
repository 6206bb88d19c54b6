"""`DrivingVecEnv`: N driving envs advanced together as torch tensors (Frenet-frame kinematic car).

The ego car lives in road (Frenet) coordinates: arc length `s` along the lane centre, lateral offset `d`
(positive = left), heading error `psi` against the road tangent and speed `v`. The road curvature is a sum of
two sinusoids in `s` drawn per episode, so it is evaluated in closed form anywhere without lookup tables.
All randomness comes from a counter-based hash of (env seed, episode, step, stream) (see `rng.py`), so env i's
episodes depend only on its seed `seed + i`, never on the number of envs beside it.

State is stored "struct of arrays": every field is a tensor whose last dim is the env index, so every
elementwise op runs over contiguous memory; per-slot fields (pedestrians) are (slots, N).

Domain randomization (`randomize={knob: (lo, hi)}`) draws the named knobs per env at every episode start from the
same counter-based RNG and keeps them as per-env state fields (`KNOB_FIELDS`); without it every knob is the
config's scalar and the step code is exactly the fixed-knob path.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from mtdqn.envs.driving import config as C
from mtdqn.envs.driving.config import RANDOMIZABLE, TASK_FEATURES, TASKS, DrivingConfig, check_randomization
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
# continuous measurements get observation noise; presence flags and light one-hots do not
NOISE_MASK = np.array(
    [not (n.endswith("present") or n in ("light_red", "light_amber", "light_green")) for n in OBS_NAMES],
    dtype=np.float32,
)
# action a: steering = a // 3 in (left, straight, right), longitudinal = a % 3 in (brake, coast, throttle)
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


class DrivingVecEnv:
    """Batched driving simulator implementing the `TensorVecEnv` protocol (same-step autoreset)."""

    def __init__(self, task: str, num_envs: int, device: str | torch.device = "cpu",
                 config: DrivingConfig | None = None, reset_mode: str | None = None,
                 randomize: dict[str, tuple[float, float]] | None = None) -> None:  # fmt: skip
        if task not in TASKS:
            raise ValueError(f"unknown driving task {task!r}; valid tasks: {', '.join(TASKS)}")
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.task, self.num_envs, self.device = task, int(num_envs), torch.device(device)
        self.config = config if config is not None else DrivingConfig()
        if not isinstance(self.config, DrivingConfig):
            raise ValueError(f"config must be a DrivingConfig, got {type(self.config).__name__}")
        self.obs_dim, self.n_actions = OBS_DIM, N_ACTIONS
        self.has_peds, self.has_lights, _ = TASK_FEATURES[task]
        self.max_episode_steps = self.config.episode_steps(task)
        # "subset": rebuild only the rows that need it (index_copy_; cheapest on CPU, syncs on CUDA);
        # "masked": recompute all rows and torch.where them in (no host sync; default off-CPU)
        self.reset_mode = reset_mode or ("subset" if self.device.type == "cpu" else "masked")
        if self.reset_mode not in ("subset", "masked"):
            raise ValueError(f"reset_mode must be 'subset' or 'masked', got {self.reset_mode!r}")
        dev = self.device
        self.obs_low, self.obs_high = torch.as_tensor(OBS_LOW, device=dev), torch.as_tensor(OBS_HIGH, device=dev)
        self._scale = torch.as_tensor(OBS_SCALE, device=dev)
        self._scale_mat = torch.diag(self._scale)
        self._eye = torch.eye(OBS_DIM, device=dev)
        self._noise_col = (torch.as_tensor(NOISE_MASK, device=dev) * self.config.obs_noise).unsqueeze(1)
        steer = torch.tensor([C.STEER_CURVATURE, 0.0, -C.STEER_CURVATURE]).repeat_interleave(3)
        self._action_table = torch.stack([steer, torch.tensor(C.ACCEL).repeat(3)]).to(dev)  # (2, 9)
        self._preview = torch.tensor(C.PREVIEW_DISTANCES, device=dev).unsqueeze(1)
        self._green = 0.5 * (self.config.light_cycle - C.AMBER_TIME)
        rate = self.config.pedestrian_rate
        self._ped_gap = 200.0 / rate if rate > 0 else _FAR
        # domain randomization: {knob: (lo, hi)} drawn per env per episode (overrides the config's value)
        self.randomize = check_randomization(randomize)
        self._noise_mask = torch.as_tensor(NOISE_MASK, device=dev).unsqueeze(1)
        lo_hi = self.randomize.get("steer_delay")
        self._delay_slots = int(lo_hi[1]) if lo_hi else self.config.steer_delay  # length of the steering buffer
        self._st: dict[str, Tensor] = {}
        self._seeded = False

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
        self._st = self._fresh(key, episode)
        return self._observe(self._st)

    def step(self, actions: Tensor) -> StepResult:
        """Advance all envs one step (dt = 0.1 s) with int64 actions (N,); finished envs autoreset."""
        if not self._seeded:
            raise RuntimeError("call reset() before step()")
        st = dict(self._st)
        actions = torch.as_tensor(actions, device=self.device).long()
        reward, terminated = self._advance(st, actions)
        truncated = (st["t"] >= self.max_episode_steps) & ~terminated
        next_obs = self._observe(st)
        done = terminated | truncated
        idx, fresh = self._update_rows(st, done, lambda rows: self._fresh(st["key"][rows], st["episode"][rows] + 1))
        if fresh is None:
            obs = next_obs
        elif idx is None:
            obs = torch.where(done.unsqueeze(1), self._observe(fresh), next_obs)
        else:
            obs = next_obs.index_copy(0, idx, self._observe(fresh))
        self._st = st
        return StepResult(next_obs, reward, terminated, truncated, obs)

    def render(self, i: int = 0):
        """A top-down uint8 RGB picture of env `i` (numpy, see render.py)."""
        from mtdqn.envs.driving.render import render_env

        return render_env(self, i)

    def close(self) -> None:
        """Release the state tensors."""
        self._st = {}

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
            self._st[name] = torch.as_tensor(value, dtype=old.dtype, device=old.device).expand_as(old).clone()
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
        return torch.remainder(st["t"] * C.DT + st["loff"], self.config.light_cycle)

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
    def _fresh(self, key: Tensor, episode: Tensor) -> dict[str, Tensor]:
        """Initial state of new episodes for rows with these keys / episode indices (all new tensors)."""
        n, dev = key.shape[0], key.device
        u = uniforms(key, episode, 0, _W_EPISODE, _W_SLIP)  # (28, n): words 0-3 road/ego, 4-5 peds, 6 light
        e = u[: 4 * _W_PEDS]
        knobs = self._draw_knobs(key, episode) if self.randomize else {}
        mag = knobs.get("k_curvature_range", self.config.curvature_range) * (0.3 + 0.7 * e[0])
        split = torch.stack([e[1], 1.0 - e[1]])
        amp = mag * split * torch.where(e[2:4] < 0.5, -1.0, 1.0)
        (lo_w, hi_w), (lo_v, hi_v) = C.LANE_WIDTH_RANGE, C.SPEED_LIMIT_RANGE
        half_w = 0.5 * (lo_w + (hi_w - lo_w) * e[8])
        limit = lo_v + (hi_v - lo_v) * e[9]
        zeros = torch.zeros(n, device=dev)
        st = dict(
            key=key.clone(), episode=episode.clone(), t=torch.zeros(n, device=dev, dtype=torch.int64),
            s=zeros, d=e[10] - 0.5, psi=(e[11] - 0.5) * 0.2, v=limit * (0.3 + 0.7 * e[12]),
            half_w=half_w, limit=limit, amp=amp, wavenum=(2 * math.pi) / (80.0 + 220.0 * e[4:6]),
            phase=(2 * math.pi) * e[6:8], **knobs,
        )  # fmt: skip
        if self._delay_slots > 0:
            st["steer_buf"] = torch.zeros(self._delay_slots, n, device=dev)
        if self.has_peds:
            st.update(self._spawn_peds(st, zeros, u[4 * _W_PEDS : 4 * _W_LIGHT]))
        if self.has_lights:
            st["ls"], st["loff"] = self._spawn_light(torch.full_like(zeros, C.LIGHT_FIRST), u[4 * _W_LIGHT :])
        return st

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

    def _spawn_peds(self, st: dict[str, Tensor], s: Tensor, u: Tensor | None = None) -> dict[str, Tensor]:
        """New waiting pedestrians (one per slot) ahead of s (R,), drawn at each row's (episode, t)."""
        if u is None:
            u = uniforms(st["key"], st["episode"], st["t"], _W_PEDS, 2)  # (8, R): 4 features x 2 slots
        gap = st.get("k_ped_gap", self._ped_gap)
        ps = s + (C.PED_SPAWN_AHEAD - gap * torch.log(u[0:2]))
        side = torch.where(u[2:4] < 0.5, -1.0, 1.0)
        (lo_p, hi_p), (lo_t, hi_t) = C.PED_SPEED_RANGE, C.PED_TRIGGER_RANGE
        return dict(ps=ps, py=side * (st["half_w"] + C.CURB_OFFSET), pvel=-side * (lo_p + (hi_p - lo_p) * u[4:6]),
                    ptrig=lo_t + (hi_t - lo_t) * u[6:8], pphase=torch.zeros_like(ps))  # fmt: skip

    def _spawn_light(self, ls_old: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Position (m) and phase offset (s) of the light after `ls_old` from uniforms u (>= 2, R)."""
        lo, hi = C.LIGHT_GAP_RANGE
        return ls_old + (lo + (hi - lo) * u[0]), self.config.light_cycle * u[1]

    def _update_rows(self, st: dict[str, Tensor], mask: Tensor,
                     make: Callable[[Tensor | slice], dict[str, Tensor]]) -> tuple[Tensor | None, dict | None]:  # fmt: skip
        """Replace rows `mask` (N,) of fields by make(rows) (values for those rows); returns (idx, new)."""
        if self.reset_mode == "masked":
            new = make(slice(None))
            for k, v in new.items():
                st[k] = torch.where(mask, v, st[k])
            return None, new
        if not bool(mask.any()):
            return None, None
        idx = mask.nonzero().squeeze(1)
        new = make(idx)
        for k, v in new.items():
            if k != "key":  # keys never change within a seed
                st[k] = st[k].index_copy_(st[k].dim() - 1, idx, v)
        return idx, new

    # ------------------------------------------------------------------ dynamics
    def _advance(self, st: dict[str, Tensor], actions: Tensor) -> tuple[Tensor, Tensor]:
        """Apply actions to the state dict (new tensors); returns (reward, terminated)."""
        cfg = self.config
        st["t"] = t = st["t"] + 1
        steer, accel = self._action_table[:, actions]
        if self.randomize:
            steer = self._perturb_steering_per_env(st, steer, t)
        else:
            if cfg.steer_delay > 0:
                buf = st["steer_buf"]
                steer, st["steer_buf"] = buf[0], torch.cat([buf[1:], steer.unsqueeze(0)])
            if cfg.slip > 0:
                steer = steer.masked_fill(uniforms(st["key"], st["episode"], t, _W_SLIP, 1)[0] < cfg.slip, 0.0)
        s, d, psi = st["s"], st["d"], st["psi"]
        kappa = self.curvature(s, st)
        st["v"] = v = (st["v"] + accel * C.DT).clamp_(0.0, C.V_MAX)
        sdot = v * torch.cos(psi) / (1.0 - d * kappa)
        st["s"] = s_new = s + sdot * C.DT
        st["d"] = d_new = d + (v * C.DT) * torch.sin(psi)
        st["psi"] = psi_new = psi + (v * steer - kappa * sdot) * C.DT
        half_w, limit = st["half_w"], st["limit"]
        offroad = (d_new.abs() > half_w + C.OFFROAD_MARGIN) | (psi_new.abs() > C.HEADING_LIMIT)
        speeding = torch.relu(v - limit) * C.W_SPEEDING
        reward = (sdot - speeding) / limit - C.W_LATERAL * (d_new / half_w).square() - C.PENALTY_OFFROAD * offroad
        terminated = offroad
        if self.has_peds:
            hit = self._advance_peds(st, s_new, d_new)
            reward, terminated = reward - C.PENALTY_COLLISION * hit, terminated | hit
        if self.has_lights:
            ran_red = self._advance_lights(st, s_new)
            reward, terminated = reward - C.PENALTY_RED * ran_red, terminated | ran_red
        return reward, terminated

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
            st["steer_buf"] = full[1:]
        slip = st.get("k_slip", cfg.slip)
        if "k_slip" in st or cfg.slip > 0:
            steer = steer.masked_fill(uniforms(st["key"], st["episode"], t, _W_SLIP, 1)[0] < slip, 0.0)
        return steer

    def _advance_peds(self, st: dict[str, Tensor], s: Tensor, d: Tensor) -> Tensor:
        """Move pedestrians, respawn the ones 5 m behind the car; returns the collision mask (N,)."""
        ps, pvel, pphase = st["ps"], st["pvel"], st["pphase"]
        ds = ps - s
        pphase = pphase.masked_fill((pphase == 0) & (ds < st["ptrig"]), 1.0)
        walking = pphase == 1
        st["py"] = py = torch.where(walking, st["py"] + pvel * C.DT, st["py"])
        curb = st["half_w"] + C.CURB_OFFSET
        st["pphase"] = pphase.masked_fill(walking & (py * pvel > curb * pvel.abs()), 2.0)
        hit = (ds.abs() < C.CAR_HALF_LENGTH + C.PED_RADIUS) & ((py - d).abs() < C.CAR_HALF_WIDTH + C.PED_RADIUS)
        passed = ds < -5.0

        def respawn(rows: Tensor | slice) -> dict[str, Tensor]:
            sub = {k: st[k][..., rows] for k in ("key", "episode", "t", "half_w", *PED_FIELDS, "k_ped_gap") if k in st}
            new, keep = self._spawn_peds(sub, s[rows]), passed[:, rows]
            return {k: torch.where(keep, new[k], sub[k]) for k in PED_FIELDS}

        self._update_rows(st, passed.any(0), respawn)
        return hit.any(0)

    def _advance_lights(self, st: dict[str, Tensor], s: Tensor) -> Tensor:
        """Check stop-line crossings against the light state, respawn passed lights; returns red-run mask."""
        crossed = s >= st["ls"]
        ran_red = crossed & (self._cycle_time(st) >= self._green + C.AMBER_TIME)

        def respawn(rows: Tensor | slice) -> dict[str, Tensor]:
            sub = {k: st[k][rows] for k in ("key", "episode", "t", "ls")}
            ls, loff = self._spawn_light(sub["ls"], uniforms(sub["key"], sub["episode"], sub["t"], _W_LIGHT, 1))
            return dict(ls=ls, loff=loff)

        self._update_rows(st, crossed, respawn)
        return ran_red

    # ------------------------------------------------------------------ observation
    def _observe(self, st: dict[str, Tensor]) -> Tensor:
        """The normalized observation (R, OBS_DIM) of the rows in `st` (layout: OBS_NAMES)."""
        s, d, psi, v, half_w = st["s"], st["d"], st["psi"], st["v"], st["half_w"]
        n = s.shape[0]
        ego = torch.stack([v, st["limit"], (d / half_w).clamp_(-3.0, 3.0), 2.0 * half_w, psi])
        parts = [ego, self.curvature(s + self._preview, st)]
        parts.append(self._observe_peds(st, s, d, psi, v) if self.has_peds else s.new_zeros(5 * C.PED_SLOTS, n))
        parts.append(self._observe_light(st, s) if self.has_lights else s.new_zeros(6, n))
        raw = torch.cat(parts)  # (OBS_DIM, R), rows contiguous
        noise_std = st.get("k_obs_noise")
        if noise_std is None and self.config.obs_noise == 0:
            return torch.mm(raw.t(), self._scale_mat)  # transpose + scale in one BLAS call
        noise_col = self._noise_col if noise_std is None else self._noise_mask * noise_std  # (OBS_DIM, 1 or R)
        obs = raw * self._scale.unsqueeze(1)
        obs = obs + normals(st["key"], st["episode"], st["t"], _W_NOISE, OBS_DIM) * noise_col
        obs = torch.maximum(torch.minimum(obs, self.obs_high.unsqueeze(1)), self.obs_low.unsqueeze(1))
        return torch.mm(obs.t(), self._eye)

    def _observe_peds(self, st: dict[str, Tensor], s: Tensor, d: Tensor, psi: Tensor, v: Tensor) -> Tensor:
        """(10, R) raw: per slot [present, ds (m), dy (m), relative longitudinal speed (m/s), lateral speed]."""
        ds = st["ps"] - s
        vis = ((ds >= -5.0) & (ds <= C.PED_RANGE)).float()
        vy = torch.where(st["pphase"] == 1, st["pvel"], 0.0)
        vs = (-v * torch.cos(psi)).expand_as(ds)
        feats = torch.stack([vis, ds, st["py"] - d, vs, vy], dim=1) * vis.unsqueeze(1)  # (slots, 5, R)
        return feats.flatten(0, 1)

    def _observe_light(self, st: dict[str, Tensor], s: Tensor) -> Tensor:
        """(6, R) raw: [present, distance (m), red, amber, green, time to change (s, <= 20)]."""
        dist = st["ls"] - s
        vis = (dist <= C.LIGHT_RANGE).float()
        ttc, red, amber, green = self.light_phase(st)
        feats = torch.stack([vis, dist, red.float(), amber.float(), green.float(), ttc.clamp(max=20.0)])
        return feats * vis
