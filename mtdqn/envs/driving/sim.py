"""`DrivingVecEnv`: N driving envs advanced together as torch tensors (Frenet-frame kinematic car).

The ego car lives in road (Frenet) coordinates: arc length `s` along the lane centre, lateral offset `d`
(positive = left), heading error `psi` against the road tangent and speed `v`. The road curvature is a sum of
two sinusoids in `s` drawn per episode, so it is evaluated in closed form anywhere without lookup tables.
All randomness comes from a counter-based hash of (env seed, episode, step, stream) (see `rng.py`), so env i's
episodes depend only on its seed `seed + i`, never on the number of envs beside it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mtdqn.envs.driving import config as C
from mtdqn.envs.driving.config import TASK_FEATURES, TASKS, DrivingConfig
from mtdqn.envs.driving.rng import normals, seed_keys, uniforms
from mtdqn.types import StepResult

OBS_DIM = 26
N_ACTIONS = 9
KAPPA_SCALE = 0.03  # 1/m: curvature preview is divided by this
# observation layout (index -> name); units and scales in docs/driving.md
OBS_NAMES: tuple[str, ...] = (
    "speed", "speed_limit", "lateral_offset", "lane_width", "heading_error",
    *(f"curvature_{int(x)}m" for x in C.PREVIEW_DISTANCES),
    *(f"ped{k}_{f}" for k in range(C.PED_SLOTS) for f in ("present", "ds", "dy", "vs", "vy")),
    "light_present", "light_distance", "light_red", "light_amber", "light_green", "light_time_to_change",
)  # fmt: skip
_PED_LOW, _PED_HIGH = [0.0, -0.1, -1.5, -1.0, -1.0], [1.0, 1.0, 1.5, 0.0, 1.0]
OBS_LOW = np.array(
    [0.0, 0.0, -2.0, 0.0, -1.0] + [-1.0] * 5 + _PED_LOW * C.PED_SLOTS + [0.0] * 6, dtype=np.float32
)
OBS_HIGH = np.array([1.0, 1.0, 2.0, 1.0, 1.0] + [1.0] * 5 + _PED_HIGH * C.PED_SLOTS + [1.0] * 6, dtype=np.float32)
# which components are continuous measurements (get observation noise); presence flags / one-hots do not
NOISE_MASK = np.array([not (n.endswith("present") or n in ("light_red", "light_amber", "light_green"))
                       for n in OBS_NAMES], dtype=np.float32)  # fmt: skip
# action a: steering = a // 3 in (left, straight, right), longitudinal = a % 3 in (brake, coast, throttle)
ACTION_NAMES = tuple(f"{st}+{lo}" for st in ("left", "straight", "right") for lo in ("brake", "coast", "throttle"))

_W_SLIP, _W_PEDS, _W_LIGHT, _W_EPISODE = 0, 1, 3, 4  # 4-uniform word offsets in a draw (see _draw)
_STREAM_MAIN, _STREAM_NOISE = 0, 1000
_FAR = 1.0e6  # m: where absent pedestrians / lights are parked
FLOAT_FIELDS = ("s", "d", "psi", "v", "half_w", "limit", "amp", "wavenum", "phase",
                "ps", "py", "pdir", "pspeed", "ptrig", "pphase", "ls", "loff", "steer_buf")  # fmt: skip
INT_FIELDS = ("key", "episode", "t")


class DrivingVecEnv:
    """Batched driving simulator implementing the `TensorVecEnv` protocol (same-step autoreset)."""

    def __init__(self, task: str, num_envs: int, device: str | torch.device = "cpu",
                 config: DrivingConfig | None = None, reset_mode: str | None = None) -> None:  # fmt: skip
        if task not in TASKS:
            raise ValueError(f"unknown driving task {task!r}; valid tasks: {', '.join(TASKS)}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.task, self.num_envs, self.device = task, int(num_envs), torch.device(device)
        self.config = config if config is not None else DrivingConfig()
        self.obs_dim, self.n_actions = OBS_DIM, N_ACTIONS
        self.has_peds, self.has_lights, _ = TASK_FEATURES[task]
        self.max_episode_steps = self.config.episode_steps(task)
        # "subset": reset only the finished rows (cheap on CPU); "masked": torch.where over all rows (no sync)
        self.reset_mode = reset_mode or ("subset" if self.device.type == "cpu" else "masked")
        if self.reset_mode not in ("subset", "masked"):
            raise ValueError(f"reset_mode must be 'subset' or 'masked', got {self.reset_mode!r}")
        dev = self.device
        self.obs_low = torch.as_tensor(OBS_LOW, device=dev)
        self.obs_high = torch.as_tensor(OBS_HIGH, device=dev)
        self._noise_mask = torch.as_tensor(NOISE_MASK, device=dev) * self.config.obs_noise
        self._steer_table = torch.tensor([C.STEER_CURVATURE, 0.0, -C.STEER_CURVATURE], device=dev).repeat_interleave(3)
        self._accel_table = torch.tensor(C.ACCEL, device=dev).repeat(3)
        self._preview = torch.tensor(C.PREVIEW_DISTANCES, device=dev)
        self._green = 0.5 * (self.config.light_cycle - C.AMBER_TIME)
        rate = self.config.pedestrian_rate
        self._ped_gap = 200.0 / rate if rate > 0 else _FAR
        self._st: dict[str, Tensor] = {}
        self._seeded = False

    # ------------------------------------------------------------------ protocol
    def reset(self, seed: int | None = None) -> Tensor:
        """Reset all envs; env i is seeded with seed + i (None: new episodes of the current seeds)."""
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
        reward, terminated = self._advance(st, torch.as_tensor(actions, device=self.device).long())
        truncated = (st["t"] >= self.max_episode_steps) & ~terminated
        next_obs = self._observe(st)
        done = terminated | truncated
        obs = self._autoreset(st, done, next_obs)
        self._st = st
        return StepResult(next_obs, reward, terminated, truncated, obs)

    def close(self) -> None:
        """Release the state tensors."""
        self._st = {}

    # ------------------------------------------------------------------ test / render helpers
    def get_state(self) -> dict[str, Tensor]:
        """A copy of the state tensors (names in FLOAT_FIELDS and INT_FIELDS; units in docs/driving.md)."""
        return {k: v.clone() for k, v in self._st.items()}

    def set_state(self, **fields: Tensor | float) -> Tensor:
        """Overwrite state fields (broadcast to their shapes) for tests; returns the new observation."""
        for name, value in fields.items():
            if name not in self._st:
                raise ValueError(f"unknown state field {name!r}; valid: {sorted(self._st)}")
            old = self._st[name]
            self._st[name] = torch.as_tensor(value, dtype=old.dtype, device=old.device).expand_as(old).clone()
        return self._observe(self._st)

    def observe(self) -> Tensor:
        """The current observation (N, obs_dim) without stepping."""
        return self._observe(self._st)

    def curvature(self, s: Tensor, rows: Tensor | slice = slice(None)) -> Tensor:
        """Road curvature (1/m) at arc lengths s (R, P) for env rows `rows`."""
        return _curvature(self._st["amp"][rows], self._st["wavenum"][rows], self._st["phase"][rows], s)

    def light_phase(self, st: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(time to change in s, red, amber, green) of each env's next light."""
        st = self._st if st is None else st
        cycle = self.config.light_cycle
        ph = torch.remainder(st["t"].float() * C.DT + st["loff"], cycle)
        green, amber_end = self._green, self._green + C.AMBER_TIME
        red, is_green = ph >= amber_end, ph < green
        amber = ~red & ~is_green
        ttc = torch.where(is_green, green - ph, torch.where(amber, amber_end - ph, cycle - ph))
        return ttc, red, amber, is_green

    # ------------------------------------------------------------------ internals
    def _draw(self, st: dict[str, Tensor], episode: Tensor, t: Tensor | int, n_words: int) -> Tensor:
        """Uniforms for words [0, n_words) of the main stream at (episode, t)."""
        return uniforms(st["key"], episode, t, _STREAM_MAIN, n_words)

    def _fresh(self, key: Tensor, episode: Tensor) -> dict[str, Tensor]:
        """Initial state of new episodes for rows with these keys / episode indices."""
        n, dev = key.shape[0], key.device
        u = uniforms(key, episode, 0, _STREAM_MAIN, _W_EPISODE + 4)
        e = u[:, 4 * _W_EPISODE :]
        mag = self.config.curvature_range * (0.3 + 0.7 * e[:, 0:1])
        amp = mag * torch.cat([e[:, 1:2], 1.0 - e[:, 1:2]], dim=1)
        amp = amp * torch.where(e[:, 2:4] < 0.5, -1.0, 1.0)
        wavenum = (2 * math.pi) / (80.0 + 220.0 * e[:, 4:6])
        lo_w, hi_w = C.LANE_WIDTH_RANGE
        lo_v, hi_v = C.SPEED_LIMIT_RANGE
        half_w = 0.5 * (lo_w + (hi_w - lo_w) * e[:, 8])
        limit = lo_v + (hi_v - lo_v) * e[:, 9]
        zeros = torch.zeros(n, device=dev)
        st = dict(
            key=key, episode=episode, t=torch.zeros(n, device=dev, dtype=torch.int64),
            s=zeros, d=(e[:, 10] - 0.5) * 1.0, psi=(e[:, 11] - 0.5) * 0.2, v=limit * (0.3 + 0.7 * e[:, 12]),
            half_w=half_w, limit=limit, amp=amp, wavenum=wavenum, phase=(2 * math.pi) * e[:, 6:8],
            steer_buf=torch.zeros(n, self.config.steer_delay, device=dev),
        )  # fmt: skip
        st.update(self._spawn_peds(zeros.unsqueeze(1), half_w.unsqueeze(1), u[:, 4 * _W_PEDS : 4 * _W_LIGHT]))
        if self.has_lights:
            ls, loff = self._spawn_light(zeros + C.LIGHT_FIRST, u[:, 4 * _W_LIGHT : 4 * _W_LIGHT + 2])
        else:
            ls, loff = zeros + _FAR, zeros.clone()
        st.update(ls=ls, loff=loff)
        return st

    def _spawn_peds(self, s: Tensor, half_w: Tensor, u: Tensor) -> dict[str, Tensor]:
        """New waiting pedestrians ahead of s (N, 1) from 8 uniforms per row (2 slots x 4)."""
        u = u.view(-1, C.PED_SLOTS, 4)
        if not self.has_peds:
            far = torch.full_like(u[..., 0], _FAR)
            return dict(ps=far, py=torch.zeros_like(far), pdir=torch.ones_like(far),
                        pspeed=torch.zeros_like(far), ptrig=torch.zeros_like(far), pphase=torch.full_like(far, 2.0))  # fmt: skip
        ps = s + C.PED_SPAWN_AHEAD - self._ped_gap * torch.log(u[..., 0])
        side = torch.where(u[..., 1] < 0.5, -1.0, 1.0)
        py = side * (half_w + C.CURB_OFFSET)
        lo_p, hi_p = C.PED_SPEED_RANGE
        lo_t, hi_t = C.PED_TRIGGER_RANGE
        return dict(ps=ps, py=py, pdir=-side, pspeed=lo_p + (hi_p - lo_p) * u[..., 2],
                    ptrig=lo_t + (hi_t - lo_t) * u[..., 3], pphase=torch.zeros_like(ps))  # fmt: skip

    def _spawn_light(self, ls_old: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Position and phase offset of the light after `ls_old`, from 2 uniforms per row."""
        lo, hi = C.LIGHT_GAP_RANGE
        return ls_old + lo + (hi - lo) * u[:, 0], self.config.light_cycle * u[:, 1]

    def _advance(self, st: dict[str, Tensor], actions: Tensor) -> tuple[Tensor, Tensor]:
        """Apply actions to the state dict in place (new tensors); returns (reward, terminated)."""
        cfg = self.config
        t = st["t"] + 1
        st["t"] = t
        u = self._draw(st, st["episode"], t, 4) if (cfg.slip > 0 or self.has_peds or self.has_lights) else None
        steer = self._steer_table[actions]
        if cfg.steer_delay > 0:
            buf = st["steer_buf"]
            steer, st["steer_buf"] = buf[:, 0], torch.cat([buf[:, 1:], steer.unsqueeze(1)], dim=1)
        if cfg.slip > 0:
            steer = steer * (u[:, _W_SLIP] >= cfg.slip)
        s, d, psi = st["s"], st["d"], st["psi"]
        kappa = _curvature(st["amp"], st["wavenum"], st["phase"], s.unsqueeze(1)).squeeze(1)
        v = (st["v"] + self._accel_table[actions] * C.DT).clamp_(0.0, C.V_MAX)
        sdot = v * torch.cos(psi) / (1.0 - d * kappa)
        st["s"] = s_new = s + sdot * C.DT
        st["d"] = d_new = d + (v * C.DT) * torch.sin(psi)
        st["psi"] = psi_new = psi + (v * steer - kappa * sdot) * C.DT
        st["v"] = v
        half_w, limit = st["half_w"], st["limit"]
        offroad = (d_new.abs() > half_w + C.OFFROAD_MARGIN) | (psi_new.abs() > C.HEADING_LIMIT)
        reward = sdot / limit - C.W_SPEEDING * torch.relu(v - limit) / limit - C.W_LATERAL * (d_new / half_w) ** 2
        reward = reward - C.PENALTY_OFFROAD * offroad
        terminated = offroad
        if self.has_peds:
            hit = self._advance_peds(st, s_new, d_new, u)
            reward, terminated = reward - C.PENALTY_COLLISION * hit, terminated | hit
        if self.has_lights:
            ran_red = self._advance_lights(st, s_new, u)
            reward, terminated = reward - C.PENALTY_RED * ran_red, terminated | ran_red
        return reward, terminated

    def _advance_peds(self, st: dict[str, Tensor], s: Tensor, d: Tensor, u: Tensor) -> Tensor:
        """Move pedestrians, respawn passed ones; returns the collision mask (N,)."""
        ps, py, pdir, pphase = st["ps"], st["py"], st["pdir"], st["pphase"]
        s1, d1, curb = s.unsqueeze(1), d.unsqueeze(1), st["half_w"].unsqueeze(1) + C.CURB_OFFSET
        pphase = torch.where((pphase == 0) & (ps - s1 < st["ptrig"]), 1.0, pphase)
        walking = pphase == 1
        py = py + (pdir * st["pspeed"] * C.DT) * walking
        pphase = torch.where(walking & (py * pdir > curb), 2.0, pphase)
        hit = ((ps - s1).abs() < C.CAR_HALF_LENGTH + C.PED_RADIUS) & ((py - d1).abs() < C.CAR_HALF_WIDTH + C.PED_RADIUS)
        passed = ps < s1 - 5.0
        new = self._spawn_peds(s1, curb - C.CURB_OFFSET, u[:, 4 * _W_PEDS : 4 * _W_LIGHT])
        st.update(ps=ps, py=py, pphase=pphase)
        for k in ("ps", "py", "pdir", "pspeed", "ptrig", "pphase"):
            st[k] = torch.where(passed, new[k], st[k])
        return hit.any(dim=1)

    def _advance_lights(self, st: dict[str, Tensor], s: Tensor, u: Tensor) -> Tensor:
        """Check stop-line crossings against the light state; respawn passed lights; returns red-run mask."""
        crossed = s >= st["ls"]
        _, red, _, _ = self.light_phase(st)
        ls, loff = self._spawn_light(st["ls"], u[:, 4 * _W_LIGHT : 4 * _W_LIGHT + 2])
        st["ls"] = torch.where(crossed, ls, st["ls"])
        st["loff"] = torch.where(crossed, loff, st["loff"])
        return crossed & red

    def _autoreset(self, st: dict[str, Tensor], done: Tensor, next_obs: Tensor) -> Tensor:
        """Replace finished rows of `st` by fresh episodes; returns the observation to act on next."""
        if self.reset_mode == "masked":
            fresh = self._fresh(st["key"], st["episode"] + 1)
            for k, v in fresh.items():
                st[k] = torch.where(done.view(-1, *([1] * (v.dim() - 1))), v, st[k])
            return torch.where(done.unsqueeze(1), self._observe(fresh), next_obs)
        if not bool(done.any()):
            return next_obs
        idx = done.nonzero().squeeze(1)
        fresh = self._fresh(st["key"][idx], st["episode"][idx] + 1)
        for k, v in fresh.items():
            st[k] = st[k].index_copy(0, idx, v)
        return next_obs.index_copy(0, idx, self._observe(fresh))

    def _observe(self, st: dict[str, Tensor]) -> Tensor:
        """The normalized observation (R, OBS_DIM) of the rows in `st` (layout: OBS_NAMES)."""
        s, d, psi, v, half_w = st["s"], st["d"], st["psi"], st["v"], st["half_w"]
        n = s.shape[0]
        ego = torch.stack([v, st["limit"], d / half_w, half_w, psi], dim=1) * self._ego_scale
        kap = _curvature(st["amp"], st["wavenum"], st["phase"], s.unsqueeze(1) + self._preview)
        parts = [ego, kap * (1.0 / KAPPA_SCALE)]
        parts.append(self._observe_peds(st, s, d, psi, v) if self.has_peds else s.new_zeros(n, 5 * C.PED_SLOTS))
        parts.append(self._observe_light(st, s) if self.has_lights else s.new_zeros(n, 6))
        obs = torch.cat(parts, dim=1)
        if self.config.obs_noise > 0:
            obs = obs + normals(st["key"], st["episode"], st["t"], _STREAM_NOISE, OBS_DIM) * self._noise_mask
        return torch.maximum(torch.minimum(obs, self.obs_high), self.obs_low)

    @property
    def _ego_scale(self) -> Tensor:
        return torch.tensor([1 / C.V_MAX, 1 / C.V_MAX, 1.0, 2 / 5.0, 1 / C.HEADING_LIMIT], device=self.device)

    def _observe_peds(self, st: dict[str, Tensor], s: Tensor, d: Tensor, psi: Tensor, v: Tensor) -> Tensor:
        """(R, 10): per slot [present, ds/60, dy/5, relative longitudinal speed/25, lateral speed/2]."""
        ds = st["ps"] - s.unsqueeze(1)
        vis = ((ds >= -5.0) & (ds <= C.PED_RANGE)).float()
        vy = st["pdir"] * st["pspeed"] * (st["pphase"] == 1)
        vs = (-v * torch.cos(psi)).unsqueeze(1).expand_as(ds)
        feats = torch.stack([vis, ds * (1 / C.PED_RANGE), (st["py"] - d.unsqueeze(1)) * 0.2, vs * (1 / C.V_MAX), vy * 0.5], -1)
        return (feats * vis.unsqueeze(-1)).flatten(1)

    def _observe_light(self, st: dict[str, Tensor], s: Tensor) -> Tensor:
        """(R, 6): [present, distance/100, red, amber, green, time to change/20 (<=1)]."""
        dist = st["ls"] - s
        vis = (dist <= C.LIGHT_RANGE).float()
        ttc, red, amber, green = self.light_phase(st)
        feats = torch.stack([vis, dist * (1 / C.LIGHT_RANGE), red.float(), amber.float(), green.float(),
                             (ttc * (1 / 20.0)).clamp(max=1.0)], dim=1)  # fmt: skip
        return feats * vis.unsqueeze(1)


def _curvature(amp: Tensor, wavenum: Tensor, phase: Tensor, s: Tensor) -> Tensor:
    """kappa(s) = sum_j amp_j sin(wavenum_j s + phase_j) for s of shape (R, P) -> (R, P)."""
    arg = s.unsqueeze(-1) * wavenum.unsqueeze(1) + phase.unsqueeze(1)
    return (torch.sin(arg) * amp.unsqueeze(1)).sum(-1)
