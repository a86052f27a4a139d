"""`askdraft <command>`: one entry point for every stage that is not an axolotl or lm_eval run."""
import argparse
import importlib
import sys

from askdraft.command import run

# command -> the module that defines it. Only the named command's module is imported: a stage that
# needs no torch (recipe, sft-data, ...) starts in a fraction of a second, not after torch, scipy and
# openai load. `askdraft --help` (or a command not listed) imports them all, to list every command.
COMMANDS = {
    "data": "data", "base-model": "base_model", "sft-data": "sft_data", "recipe": "recipe", "drafts": "drafts",
    "pairs": "pairs", "evaluate": "evaluate", "summarize": "evaluate", "attribution": "attribution",
    "judge": "judge", "report": "report", "kfold": "kfold", "question-quality": "quality",
    "answer-drafts": "answerer", "pack-results": "pack", "bench": "bench",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="askdraft", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    wanted = COMMANDS.get(next((a for a in argv if not a.startswith("-")), None))
    for name in dict.fromkeys([wanted] if wanted else COMMANDS.values()):
        importlib.import_module(f"askdraft.{name}").add_cli(sub)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
