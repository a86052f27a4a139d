"""`askdraft <command>`: one entry point for every stage that is not an axolotl or lm_eval run."""
import argparse
import sys

from askdraft.command import run


def main(argv=None):
    p = argparse.ArgumentParser(prog="askdraft", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    from askdraft import attribution, base_model, data, drafts, evaluate, judge, kfold, pairs, recipe, report, sft_data
    for mod in (data, base_model, sft_data, recipe, drafts, pairs, evaluate, attribution, judge, report, kfold):
        mod.add_cli(sub)
    from askdraft import quality; quality.add_cli(sub)  # noqa: E702
    from askdraft import answerer; answerer.add_cli(sub)  # noqa: E702
    from askdraft import pack; pack.add_cli(sub)  # noqa: E702
    from askdraft import bench; bench.add_cli(sub)  # noqa: E702
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
