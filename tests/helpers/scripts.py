"""Run a `python scripts/<name>.py ...` command line inside the test process: the same exit status, stdout and
stderr, without starting an interpreter that imports torch, Lightning and Hydra again (seconds per call)."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def script_module(name: str):
    """scripts/<name>.py imported as module `name` (scripts/ on sys.path, as when the script runs)."""
    scripts = str(ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module(name)


def run_script(name: str, *argv: str) -> subprocess.CompletedProcess:
    """`python scripts/<name>.py *argv` from the repository root, in this process: a SystemExit with a message
    prints it to stderr and exits 1, as the interpreter does; argparse errors exit 2 with their usage line."""
    module = script_module(name)
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = module.main(list(argv))
            except SystemExit as exc:
                code = exc.code
                if code is not None and not isinstance(code, int):
                    print(code, file=sys.stderr)
                    code = 1
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess([f"scripts/{name}.py", *argv], code or 0, out.getvalue(), err.getvalue())
