"""debug_last: `debug=<name>` becomes `+debug=<name>` after the other overrides (so after `+experiment=`)."""

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
