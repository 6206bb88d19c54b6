"""Counts a script needs at least one of (episodes, env counts, processes) are refused by the script's own parser:
`<script>: error: --flag ...`, exit status 2, before any work. `robustness.py --episodes 0` ended in an IndexError
traceback, `driving_reference_scores.py --episodes 0` and `bench_envs.py --counts 0` in the simulator's ValueError
traceback naming its internal num_envs, and `bench_scaling.py --devices 0` was not checked by the script."""

from __future__ import annotations

import pytest

from tests.helpers.scripts import run_script


@pytest.mark.parametrize(
    "name, argv, said",
    [
        ("robustness", ["no_such_run", "--episodes", "0"], "robustness.py: error: --episodes 0 must be an integer >= 1"),
        ("driving_reference_scores", ["--episodes", "0"],
         "driving_reference_scores.py: error: --episodes 0 must be an integer >= 1"),
        ("bench_envs", ["--counts", "1", "0"], "bench_envs.py: error: --counts 1 0: each must be an integer >= 1"),
        ("bench_envs", ["--steps", "0"], "bench_envs.py: error: --steps 0: must be an integer >= 1"),
        ("bench_scaling", ["--devices", "0"], "bench_scaling.py: error: --devices 0: each must be an integer >= 1"),
        ("bench_scaling", ["--repeats", "-1"], "bench_scaling.py: error: --repeats -1: must be an integer >= 1"),
    ],
)
def test_a_count_below_one_is_a_parser_error(name, argv, said):
    res = run_script(name, *argv)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith(said) and not res.stdout
