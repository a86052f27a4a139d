"""The docs and the layout they describe: README.md stays short, results/README.md indexes every
results folder, the plugin's config reference matches args.py, data/samples/README.md names the
files that are there, and no stage module imports the CLI back.

Which test covers which README command is listed in README_COMMANDS below."""
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "plugins"))


def test_no_module_imports_the_cli():
    """cli.py imports every stage module; a stage module importing cli back would be a circle."""
    offenders = []
    for path in sorted((REPO / "tools/askdraft").glob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom)
                     and node.module else [])
            if any(n == "askdraft.cli" or n.startswith("askdraft.cli.") for n in names):
                offenders.append(path.name)
    assert not offenders, f"these modules import askdraft.cli: {offenders}"
