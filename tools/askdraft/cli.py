"""`askdraft <command>`: one entry point for every stage that is not an axolotl or lm_eval run."""
import argparse
import sys

from askdraft.io import InputError


def main(argv=None):
    p = argparse.ArgumentParser(prog="askdraft", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    from askdraft import attribution, base_model, data, drafts, evaluate, judge, kfold, pairs, recipe, report, sft_data
    for mod in (data, base_model, sft_data, recipe, drafts, pairs, evaluate, attribution, judge, report, kfold):
        mod.add_cli(sub)
    return run(p.parse_args(argv))


def standalone(add_arguments, prog, doc, argv=None):
    """A module's own script entry point (e.g. tools/build_dpo_pairs.py): its parser, then run()."""
    p = add_arguments(argparse.ArgumentParser(prog=prog, description=doc,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(p.parse_args(argv))


def run(args):
    """Run a parsed command: bad input prints its message (file and line) and exits 2."""
    try:
        return args.func(args) or 0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
