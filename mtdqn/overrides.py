"""Hydra override order: `debug=<name>` applies after `+experiment=<name>`.

Hydra appends a `+group=option` override to the end of train.yaml's defaults list, so a preset chosen with
`+experiment=<name>` is merged after every group listed there. Were `debug` listed there, a preset's own budgets would
override `debug=smoke`'s, and `python train.py +experiment=minatar_dqn debug=smoke` would train the full 500k env
steps. So `debug` is not in the defaults list; `debug_last` turns `debug=<name>` into `+debug=<name>` placed after the
other group choices, so the debug settings win over the preset's, and plain `key=value` overrides (applied by Hydra
after the whole defaults list) still win over both. train.py applies it to the command line; `compose_config`, which
scripts and tests use to compose the train config without a Hydra app, applies it to their overrides.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _is_debug(arg: str) -> bool:
    return arg.lstrip("+~").split("=", 1)[0] == "debug"


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def debug_last(args: Sequence[str]) -> list[str]:
    """`args` with every `debug=<name>` (or `+debug=`, `++debug=`) rewritten as `+debug=<name>` and moved after the
    last other override (so after any `+experiment=`), flags such as `-m` or `--cfg job` kept where they are.
    `debug=null` (or `~debug`) means no debug config and is dropped."""
    args = list(args)
    debug = [a for a in args if _is_debug(a)]
    if not debug:
        return args
    rest = [a for a in args if not _is_debug(a)]
    moved = []
    for arg in debug:
        value = arg.split("=", 1)[1] if "=" in arg else ""
        if arg.startswith("~") or value in ("", "null"):
            continue
        moved.append(f"+debug={value}")
    last = max((i for i, a in enumerate(rest) if _is_override(a)), default=len(rest) - 1)
    return [*rest[:last + 1], *moved, *rest[last + 1:]]


class ConfigError(ValueError):
    """Overrides that do not compose: an unknown group option or key, a malformed override (Hydra's message, which
    lists a group's options)."""


def compose_config(overrides: Sequence[str], return_hydra_config: bool = False) -> DictConfig:
    """conf/train.yaml with `overrides`, ordered as train.py orders its command line (debug_last). Overrides that do
    not compose raise ConfigError (a ValueError: bad input) with Hydra's message."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        try:
            return compose("train", overrides=debug_last(overrides), return_hydra_config=return_hydra_config)
        except HydraException as exc:
            raise ConfigError(str(exc).split("\nConfig search path:")[0].strip()) from exc


def script_main(main: Callable[[], Any], prog: str) -> None:
    """Run a script's `main` as its entry point: bad input (a ValueError: overrides that do not compose, a config
    train.py would refuse) ends it with `<prog>: error: <message>` and status 2, as argparse ends a bad flag; with
    HYDRA_FULL_ERROR=1 (as for train.py) the traceback shows instead."""
    try:
        result = main()
    except ValueError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)


def check_group_choices(args: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """A config group choice on the command line (`+experiment=lane_keep_dqm`, `optimizer=adm`, a sweep's
    `optimizer=adam,adm`) that names no file of the group: ValueError naming the key, the nearest options and all
    of them (Hydra's own error lists the options, without the nearest, under a page of text). Keys with a dot set
    values, not groups; `hydra/...` groups, sweep functions (`choice(...)`) and `null` are left to Hydra, and so is
    every choice where the command line adds config folders (`--config-dir`, `hydra.searchpath`)."""
    import difflib

    elsewhere = ("--config-dir", "-cd", "--config-path", "-cp", "hydra.searchpath", "+hydra.searchpath")
    if any(a.split("=", 1)[0] in elsewhere for a in args):
        return  # options may come from another config folder: Hydra knows them, this check does not
    for arg in args:
        if not _is_override(arg) or arg.startswith("~"):
            continue
        key, value = arg.lstrip("+").split("=", 1)
        group = conf_dir / key
        if "." in key or key.startswith("hydra") or not group.is_dir() or any(c in value for c in "()[]{}$"):
            continue
        options = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in (v.strip().strip("'\"") for v in value.split(",")):  # optimizer='adam' is adam
            if not choice or choice == "null" or "/" in choice or choice in options:
                continue
            near = difflib.get_close_matches(choice, options, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(near)}? " if near else ""
            raise ValueError(f"{key}={choice}: conf/{key} has no option {choice!r}; {hint}"
                             f"the options: {', '.join(options)}")
