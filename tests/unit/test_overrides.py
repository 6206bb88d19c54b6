"""debug_last: `debug=<name>` becomes `+debug=<name>` after the other overrides (so after `+experiment=`)."""

from pathlib import Path

import pytest

from mtdqn.overrides import debug_last


def test_debug_moves_after_the_experiment():
    assert debug_last(["debug=smoke", "+experiment=x", "seed=1"]) == ["+experiment=x", "seed=1", "+debug=smoke"]
    assert debug_last(["+experiment=x", "+debug=smoke"]) == ["+experiment=x", "+debug=smoke"]
    assert debug_last(["++debug=profile"]) == ["+debug=profile"]


def test_flags_stay_where_they_are():
    assert debug_last(["-m", "debug=smoke", "+experiment=x", "seed=0,1", "--cfg", "job"]) == [
        "-m", "+experiment=x", "seed=0,1", "+debug=smoke", "--cfg", "job"]
    assert debug_last(["--cfg", "job", "debug=smoke"]) == ["--cfg", "job", "+debug=smoke"]


def test_no_debug_is_untouched_and_null_is_dropped():
    assert debug_last(["seed=1", "debug.x=1"]) == ["seed=1", "debug.x=1"]
    assert debug_last(["debug=null", "+experiment=x"]) == ["+experiment=x"]
    assert debug_last(["~debug", "seed=2"]) == ["seed=2"]


def test_scripts_end_bad_overrides_with_one_line(tmp_path):
    """A script that composes the train config (learning_results, bench_*) ends a bad override with
    `<script>: error: <Hydra's message>` and status 2, as argparse ends a bad flag; before, Hydra's traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "disabled"}
    for args, message in ((["+experiment=nosuch"], "learning_results.py: error: In 'train': Could not find "
                                                    "'experiment/nosuch'"),
                          (["gamma=3"], "learning_results.py: error: gamma=3 must be a number in (0, 1]")):
        out = subprocess.run([sys.executable, "scripts/learning_results.py", *args, "--seeds", "0"], cwd=root,
                             capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert message in out.stderr
    out = subprocess.run([sys.executable, "scripts/compress.py", str(tmp_path)], cwd=root, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 2 and out.stderr.strip() == f"compress.py: error: RUN_DIR={str(tmp_path)!r} has no config.yaml: not a run folder"


def test_a_misspelt_group_choice_names_the_nearest_options():
    """`+experiment=lane_keep_dqm` ended in Hydra's page-long error without the nearest preset."""
    from mtdqn.overrides import check_group_choices

    with pytest.raises(ValueError, match=r"experiment=lane_keep_dqm: conf/experiment has no option 'lane_keep_dqm'; "
                                         r"did you mean lane_keep_dqn"):
        check_group_choices(["+experiment=lane_keep_dqm"])
    with pytest.raises(ValueError, match=r"optimizer=adm: .*did you mean adam"):
        check_group_choices(["-m", "optimizer=adam,adm", "seed=0,1"])  # a sweep's every choice
    check_group_choices(["+experiment=lane_keep_dqn", "optimizer=adam,adabelief", "optimizer.lr=0.1", "debug=null",
                         "hydra/launcher=joblib", "net=choice(mlp,dueling)", "~callbacks", "task_set.tasks=[x]",
                         "optimizer='adam'", 'net="mlp"'])
    for extra in (["--config-dir", "/my/conf"], ["-cd", "/my/conf"], ["--config-dir=/my/conf"],
                  ["hydra.searchpath=[file:///my/conf]"]):  # another folder may hold the option
        check_group_choices(["+experiment=my_own_preset", *extra])


def test_train_py_ends_a_misspelt_preset_in_one_line():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "train.py", "+experiment=lane_keep_dqm"], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.startswith("mtdqn: error: experiment=lane_keep_dqm") \
        and "did you mean lane_keep_dqn" in out.stderr and "Traceback" not in out.stderr
