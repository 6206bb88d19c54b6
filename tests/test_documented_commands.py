"""Every command the README and docs/ show works as written, and every link in them resolves.

`python train.py ...` commands compose (a multirun's first job), and those that name no placeholder path also
build: validation, model, data module and trainer, no env step. `python scripts/<x>.py ...` commands parse with
the script's own command line; their Hydra overrides compose (bench_mtl runs its agent-alignment check). A renamed
key, group, preset or flag fails here instead of in a reader's terminal.

Placeholders: `<s>` is a seed, `<task>` a driving task; other `<...>` are paths a reader fills in (compose only).
`[--flag value]` is optional (parsed with it); `a|b|c` lists alternatives (the first is parsed).
"""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from mtdqn import resume
from mtdqn.train import build
from tests.helpers.config import compose_cfg

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"`(python (?:train\.py|scripts/[\w.]+\.py)(?: [^`]*)?)`")
PROSE = ("[option]", "[...]")  # a command shown as a pattern, not one to run
FILL = "READER_FILLS_IN"


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every inline-code command in the README and docs/*.md."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in COMMAND.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}", " ".join(m.group(1).split())))
    return found


def argv_of(command: str) -> list[str]:
    """The command's arguments after `python <file>`, with the documentation's notation resolved."""
    command = command.replace("\\|", "|").replace("<s>", "0").replace("<task>", "lane_keep")
    command = re.sub(r"\[(--[^\]]*)\]", r"\1", command)  # optional flags: parsed with them
    command = re.sub(r"<[^>]*>", FILL, command)  # a path the reader fills in
    argv = shlex.split(command)[2:]
    return [a.split("|")[0] if "|" in a and "=" not in a and not a.startswith("hydra/") else a for a in argv]


def first_job(overrides: list[str]) -> list[str]:
    """A multirun's overrides with every sweep (`seed=0,1,2`) at its first value."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
            for o in parsed]


def placeholder(argv: list[str]) -> bool:
    return any(FILL in a or "..." in a for a in argv)


COMMANDS = documented_commands()
TRAIN = [(w, c) for w, c in COMMANDS if c.startswith("python train.py") and not any(p in c for p in PROSE)]
SCRIPTS = [(w, c) for w, c in COMMANDS if c.startswith("python scripts/") and not any(p in c for p in PROSE)]


def test_the_commands_are_found():
    """The extraction sees the cookbook: a regex that silently matched nothing would pass every test below."""
    assert len(TRAIN) > 60 and len(SCRIPTS) > 30
    assert "python train.py +experiment=lane_keep_mtl_share" in {c for _, c in TRAIN}
    assert argv_of("python scripts/x.py <a run> [--criterion all\\|each\\|own] <s>") == [
        FILL, "--criterion", "all", "0"]
    assert first_job(["+experiment=a", "seed=0,1,2", "task_set=lane_keep,pedestrian"]) == [
        "+experiment=a", "seed=0", "task_set=lane_keep"]


def _buildable_here(overrides: list[str]) -> bool:
    """False when building needs hardware or an extra this machine lacks (a GPU, highway-env)."""
    text = " ".join(overrides)
    if "trainer=gpu" in text and not torch.cuda.is_available():
        return False
    if "task_set=highway" in text:
        try:
            importlib.import_module("highway_env")
        except ImportError:
            return False
    return True


@pytest.mark.parametrize(("where", "command"), TRAIN, ids=[w for w, _ in TRAIN])
def test_train_command(where, command, tmp_path, monkeypatch):
    argv = [a for a in argv_of(command) if a not in ("-m", "--multirun", "--help")]  # --help: tests/test_presets.py
    overrides = first_job(argv)
    monkeypatch.chdir(tmp_path)  # relative paths in a command (ckpt_path=outputs/...) resolve in a scratch folder
    cfg = compose_cfg(overrides, tmp_path / "run")
    if placeholder(overrides) or not _buildable_here(overrides):
        return  # composed; building needs a reader's file or hardware this machine lacks
    resume.resolve(cfg)  # ckpt_path=auto, as train() resolves it first (a fresh folder: from scratch)
    model, data, trainer = build(cfg)
    assert model is not None and data is not None and trainer is not None


def _script(name: str):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "scripts"))


@pytest.mark.parametrize(("where", "command"), SCRIPTS, ids=[w for w, _ in SCRIPTS])
def test_script_command(where, command, tmp_path):
    name = Path(shlex.split(command)[1]).stem
    module = _script(name)
    args = module.build_parser().parse_args(argv_of(command))
    if name == "bench_mtl" and args.merge is None:
        module.check_overrides(args)  # composes every agent's config and refuses agents that differ
    elif name == "learning_results":
        compose_cfg(args.overrides, tmp_path)
    elif name == "bench_scaling":
        compose_cfg([f"+experiment={args.preset}", *args.extra], tmp_path)


def _anchors(doc: Path) -> set[str]:
    """GitHub's anchors for a markdown file's headings (lower case, punctuation dropped, spaces to hyphens)."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_links_resolve():
    """Every relative link in the README, docs/*.md and the reports kept in docs/results names a file in the
    repository, and a #section in a markdown file names one of its headings."""
    broken = []
    for doc in [*DOCS, *sorted((ROOT / "docs" / "results").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]*)\)", doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path) if path else doc
            if not file.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken
    assert "multi-task-dqn" in _anchors(ROOT / "README.md")
