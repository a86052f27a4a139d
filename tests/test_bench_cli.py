"""`askdraft bench`: every benchmark is a subcommand of the one CLI."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from askdraft import cli

REPO = Path(__file__).resolve().parent.parent
SUBCOMMANDS = ("train", "generation", "multi-gpu", "profile")


def help_of(capsys, *args):
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--help"])
    assert e.value.code == 0, args
    return capsys.readouterr().out


def test_bench_lists_its_subcommands_and_each_has_help(capsys):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tools"), str(REPO / "plugins")])}
    r = subprocess.run([sys.executable, "-m", "askdraft.cli", "bench", "--help"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)  # the entry point as a user runs it
    assert r.returncode == 0, r.stderr
    listed = re.search(r"positional arguments:\n\s+WHAT\n(.*?)\n\S", r.stdout, re.S).group(1)
    assert re.findall(r"^    (\S+)", listed, re.M) == list(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        text = help_of(capsys, "bench", name)
        assert text.startswith(f"usage: askdraft bench {name} ")
        assert f"`askdraft bench {name}`" in text  # the module's docstring describes it
    with pytest.raises(SystemExit) as e:
        cli.main(["bench"])
    assert e.value.code == 2 and "WHAT" in capsys.readouterr().err


def test_multi_gpu_is_a_bench_subcommand_only(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["multi-gpu", "--help"])
    assert e.value.code == 2 and "invalid choice: 'multi-gpu'" in capsys.readouterr().err
