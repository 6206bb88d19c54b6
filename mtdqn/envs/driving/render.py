"""Top-down numpy-only rendering of one env of a DrivingVecEnv (ego-centred, car pointing up)."""

from __future__ import annotations

import numpy as np

from mtdqn.envs.driving import config as C
from mtdqn.envs.driving.sim import DrivingVecEnv

SCALE = 2  # pixels per metre and image size over the first renderer's (160 px at 3 px/m: stop lines were 3 px thin)
SIZE = 160 * SCALE  # px (square image)
PX_PER_M = 3.0 * SCALE
STEP_M = 0.25 / SCALE  # spacing of painted road points (m): under a pixel apart, so the road has no holes
BACK_M, FWD_M = 12.0, 42.0  # metres of road drawn behind / ahead of the car
GRASS, ROAD, EDGE, CAR = (46, 110, 46), (90, 90, 90), (235, 235, 235), (40, 90, 230)
PED_WAIT, PED_WALK = (250, 200, 40), (250, 120, 20)
LIGHT_RGB = {"red": (230, 30, 30), "amber": (245, 170, 20), "green": (30, 210, 60)}


def _centerline(st: dict[str, np.ndarray], sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y, theta of the lane centre at arc offsets sigma (m) from the car, in the road frame at the car."""
    s = st["s"] + sigma
    kappa = (st["amp"][:, None] * np.sin(st["wavenum"][:, None] * s + st["phase"][:, None])).sum(0)
    ds = np.diff(sigma, prepend=sigma[0])
    theta = np.cumsum(kappa * ds)
    i0 = int(np.argmin(np.abs(sigma)))
    theta -= theta[i0]
    x, y = np.cumsum(np.cos(theta) * ds), np.cumsum(np.sin(theta) * ds)
    return x - x[i0], y - y[i0], theta


def _to_pixels(st: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Road-frame points -> (row, col) pixel coordinates in the car frame (car at bottom centre, facing up)."""
    x, y = x, y - st["d"]
    c, s = np.cos(-st["psi"]), np.sin(-st["psi"])
    fwd, left = c * x - s * y, s * x + c * y
    rows = np.round(SIZE - BACK_M * PX_PER_M - fwd * PX_PER_M).astype(int)
    cols = np.round(SIZE / 2 - left * PX_PER_M).astype(int)
    return rows, cols


def _paint(img: np.ndarray, rows: np.ndarray, cols: np.ndarray, rgb: tuple[int, int, int], r: int = 0) -> None:
    """Paint (2r+1)^2 squares at the given pixels (clipped to the image)."""
    for dr in range(-r, r + 1):
        for dc in range(-r, r + 1):
            rr, cc = rows + dr, cols + dc
            ok = (rr >= 0) & (rr < SIZE) & (cc >= 0) & (cc < SIZE)
            img[rr[ok], cc[ok]] = rgb


def render_env(env: DrivingVecEnv, i: int = 0) -> np.ndarray:
    """A (SIZE, SIZE, 3) uint8 top-down picture of env `i`: road, edges, car, pedestrians and the next light."""
    st = {k: v[..., i].detach().cpu().numpy().astype(np.float64) for k, v in env.get_state().items()}
    img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    img[:] = GRASS
    sigma = np.arange(-BACK_M - 8.0, FWD_M + 8.0, STEP_M)
    x, y, th = _centerline(st, sigma)
    hw = float(st["half_w"])
    for lat in np.arange(-hw - 0.6, hw + 0.6 + STEP_M, STEP_M):
        _paint(img, *_to_pixels(st, x - np.sin(th) * lat, y + np.cos(th) * lat), ROAD)
    for lat in (-hw, hw):
        _paint(img, *_to_pixels(st, x - np.sin(th) * lat, y + np.cos(th) * lat), EDGE, SCALE // 2)
    if "ls" in st:
        _draw_light(env, i, st, img, sigma, (x, y, th), hw)
    if "ps" in st:
        for k in range(C.PED_SLOTS):
            j = int(np.argmin(np.abs(sigma - (st["ps"][k] - st["s"]))))
            if abs(sigma[j] - (st["ps"][k] - st["s"])) < 1.0:
                lat = st["py"][k]
                rgb = PED_WALK if st["pphase"][k] == 1 else PED_WAIT
                _paint(img, *_to_pixels(st, x[j : j + 1] - np.sin(th[j]) * lat, y[j : j + 1] + np.cos(th[j]) * lat), rgb,
                       SCALE)
    r0, c0 = int(SIZE - BACK_M * PX_PER_M), SIZE // 2
    hl, hw_px = int(C.CAR_HALF_LENGTH * PX_PER_M), max(1, int(C.CAR_HALF_WIDTH * PX_PER_M))
    img[r0 - hl : r0 + hl + 1, c0 - hw_px : c0 + hw_px + 1] = CAR
    img[r0 - hl : r0 - hl + 2 * SCALE, c0 - hw_px : c0 + hw_px + 1] = EDGE  # windscreen marks the front
    return img


def _draw_light(env: DrivingVecEnv, i: int, st: dict, img: np.ndarray, sigma: np.ndarray,
                line: tuple[np.ndarray, np.ndarray, np.ndarray], hw: float) -> None:  # fmt: skip
    """Draw the next light's stop line across the road, coloured by its state."""
    j = int(np.argmin(np.abs(sigma - (st["ls"] - st["s"]))))
    if abs(sigma[j] - (st["ls"] - st["s"])) > 1.0:
        return
    x, y, th = line
    _, red, amber, _ = env.light_phase()
    state = "red" if bool(red[i]) else "amber" if bool(amber[i]) else "green"
    lat = np.arange(-hw, hw + 0.01, STEP_M)
    _paint(img, *_to_pixels(st, x[j] - np.sin(th[j]) * lat, y[j] + np.cos(th[j]) * lat), LIGHT_RGB[state], SCALE)
