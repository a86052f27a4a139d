"""`askdraft report`: results/<model>/summary.json -> results/<model>/report.md + PNG plots.

Each section is a Markdown table plus (where there is something to draw) a figure; the
notebook DPO_eval.ipynb shows the same sections by calling `section(name, summary, root)`.
Every number is given with its 95 % CI, n, and where it came from (the eval file, its
model/adapter, device and wall time); the provenance section lists the commit, recipe and
data hashes and package versions. A part that has not been run yet reads "not run".
Figures are matplotlib `Figure`s built without pyplot (no global state; Agg canvas).
"""
import io
import json
import sys
from pathlib import Path

from matplotlib.figure import Figure

from askdraft.io import InputError, atomic_open
from askdraft.stats import DEGENERATE_SHARE

NOT_RUN = "not run"
CI_NOTE = "95 % CI: percentile bootstrap over dev questions (paired for differences)."


def load_summary(model, results="results"):
    path = Path(results) / model / "summary.json"
    if not path.is_file():
        raise InputError(path, None, f"not found: run `askdraft summarize --model-name {model}` first")
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- formatting

def pct(x, signed=False):
    return NOT_RUN if x is None else f"{100 * x:{'+' if signed else ''}.1f} %"


def ci(e, signed=False):
    return f"[{pct(e['ci_low'], signed)}, {pct(e['ci_high'], signed)}]"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def eval_source(s, key):
    """'file (adapter, device, wall s)' for the eval `stage.task` behind a number."""
    e = s["provenance"]["evals"].get(key)
    if e is None:
        return NOT_RUN
    model = Path(e["adapter"]).name if e["adapter"] else f"{Path(e['base']).name} (no adapter)"
    return f"`evals/{key}.jsonl`: {model}, {e['device']}, {e['run_wall_s']:.0f} s, commit {e['commit'][:8]}"


def _bars(ax, labels, entries, value="accuracy", color="tab:blue"):
    """Bars of entries[value] with asymmetric CI error bars; missing entries are labelled."""
    xs = range(len(labels))
    for x, e in zip(xs, entries):
        if e is None:
            ax.text(x, 0, NOT_RUN, ha="center", va="bottom", color="gray")
            continue
        v = e[value]
        ax.bar(x, v, color=color, alpha=0.8)
        ax.errorbar(x, v, yerr=[[v - e["ci_low"]], [e["ci_high"] - v]], color="black", capsize=5)
        ax.text(x, e["ci_high"], f"{100 * v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), labels)
    ax.set_xlim(-0.6, len(labels) - 0.4)


# ---------------------------------------------------------------- sections

def answers(e):
    """The row's "yes" share, and the flag of a constant predictor (stats.answer_share)."""
    if e.get("yes_share") is None:
        return ""
    return pct(e["yes_share"]) + (" **degenerate**" if e.get("degenerate") else "")


def majority_row(s):
    """The stages table's first row: always giving the majority answer (its accuracy, its "yes" share)."""
    m = s.get("majority_baseline")
    if not m:
        return []
    return [(f"majority class (always \"{m['answer']}\")", "", pct(m["accuracy"]), "", m["n"],
             pct(float(m["answer"] == "yes")), "")]


def stages_md(s):
    tasks = s["provenance"].get("stage_tasks", {})
    rows = [(st, f"`{tasks.get(st, '?')}`", pct(e["accuracy"]), ci(e), e["n"], answers(e),
             eval_source(s, f"{st}.{tasks.get(st)}")) for st, e in s["stages"].items()]
    md = table(("stage", "task", "accuracy", "95 % CI", "n", "answers \"yes\"", "source"),
               majority_row(s) + rows) if rows else NOT_RUN
    md += (f"\n\nA row that gives one answer to {pct(DEGENERATE_SHARE)} of the questions or more is a constant "
           "predictor (**degenerate**): its accuracy is the share of that answer, not something learned.")
    diffs = [(k.replace("_minus_", " − "), s["ablations"].get(k)) for k in ("B_minus_A", "C_minus_A")]
    return md + "\n\n" + diff_table(diffs)


def fig_stages(s):
    if not s["stages"]:
        return None
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    _bars(ax, list(s["stages"]), list(s["stages"].values()))
    ax.axhline(0.5, color="gray", ls=":", lw=1)
    ax.set(ylim=(0, 1), ylabel="dev accuracy", title=f"{s['model']}: accuracy by stage (95 % CI)")
    return fig


def diff_table(diffs):
    rows = [(name, NOT_RUN, "", "", "", "") if d is None else
            (name, pct(d["diff"], True), ci(d, True), f"{d['mcnemar_p']:.3g}", d["n"],
             f"{d['only_1_correct']} / {d['only_2_correct']}") for name, d in diffs]
    return table(("paired difference", "diff", "95 % CI", "McNemar p", "n",
                  "only first / only second correct"), rows)


def ablations_md(s):
    a, stage = s["ablations"], s["provenance"].get("ablation_stage")
    tasks = {"draft": "strategyqa_draft", "nodraft": "strategyqa_nodraft",
             "shuffled": "strategyqa_shuffleddraft", "noconclusion": "strategyqa_draft_noconclusion"}
    rows = [(k, NOT_RUN, "", "", "", "") if a.get(k) is None else
            (k, pct(a[k]["accuracy"]), ci(a[k]), a[k].get("n", ""), answers(a[k]), eval_source(s, f"{stage}.{t}"))
            for k, t in tasks.items()]
    head = (f"Stage **{stage or NOT_RUN}** with its own draft, no draft, another question's draft, and its "
            "own draft without the tentative answer (noconclusion: do the questions help?).\n\n")
    diffs = [(k.replace("_minus_", " − "), a.get(k))
             for k in ("draft_minus_nodraft", "draft_minus_shuffled", "noconclusion_minus_nodraft")]
    return (head + table(("prompt", "accuracy", "95 % CI", "n", "answers \"yes\"", "source"), rows) + "\n\n" + diff_table(diffs)
            + overrides_md(a.get("overrides")))


def overrides_md(o):
    if not o:
        return ""
    def share(e):
        return f"{pct(e['share'])} of {e['n']}" if e["share"] is not None else f"n = {e['n']}"
    base = o.get("final_equals_tentative_if_independent")
    return ("\n\nFinal answer against the draft's tentative answer, over the "
            f"{o.get('n_with_conclusion', '?')} of {o.get('n', '?')} drafts that state one: overrides a wrong one "
            f"{share(o['overrides_wrong_tentative'])}; keeps a right one {share(o['keeps_right_tentative'])}; "
            f"equals it {share(o['final_equals_tentative'])}"
            + (f", against {pct(base)} if the two answers were independent at the same \"yes\" shares" if base is not None else "")
            + f"; {o['unparsed_tentative']} drafts state none.")


ORACLE_LABELS = {"teacher_noconclusion": "teacher draft, no conclusion", "teacher_gold": "teacher draft, gold conclusion",
                 "teacher_flipped": "teacher draft, flipped conclusion", "teacher_shuffled": "another question's teacher draft",
                 "empty": "empty draft"}


def oracle_md(s):
    o = s.get("oracle")
    if not o:
        return f"Oracle ladder: {NOT_RUN}."
    rows = [(ORACLE_LABELS[k], NOT_RUN, "", "", "") if o.get(k) is None else
            (ORACLE_LABELS[k], pct(o[k]["accuracy"]), ci(o[k]),
             "" if o[k]["minus_nodraft"] is None else f"{pct(o[k]['minus_nodraft']['diff'], True)} "
             f"{ci(o[k]['minus_nodraft'], True)}, p={o[k]['minus_nodraft']['mcnemar_p']:.2g}", o[k]["n"])
            for k in ORACLE_LABELS]
    return (f"Stage **{o['stage']}** (fixed) scored after drafts it did not write: what a good draft is worth "
            "to it, and how much of that is the conclusion.\n\n"
            + table(("prompt", "accuracy", "95 % CI", "minus no draft (95 % CI, McNemar p)", "n"), rows))


def fig_oracle(s):
    o = s.get("oracle")
    if not o:
        return None
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    _bars(ax, [ORACLE_LABELS[k].replace(", ", ",\n") for k in ORACLE_LABELS], [o.get(k) for k in ORACLE_LABELS],
          color="tab:olive")
    ax.set(ylim=(0, 1), ylabel="accuracy", title=f"oracle ladder on stage {o['stage']} (95 % CI)")
    ax.tick_params(axis="x", labelsize=7)
    return fig


def kfold_md(s):
    k = s.get("kfold")
    if not k:
        return "Single split (no k-fold)."
    names = list(k["validation_pooled"])

    def cell(v):
        if v["acc"] is None:
            return "failed"
        return pct(v["acc"]) + (f" (yes {pct(v['yes_share'])})" if "yes_share" in v else "") + (
            " **degenerate**" if v.get("degenerate") else "")
    rows = [(f, *(cell(v["validation"][n]) for n in names), v["chosen"]
             + (" (all degenerate)" if (v.get("selection_rule") or {}).get("all_degenerate") else "")
             + (" (tie: " + ", ".join(v["selection_rule"]["tied"]) + ")" if (v.get("selection_rule") or {}).get("tied") else ""))
            for f, v in k["selection"].items()]
    rows.append(("pooled", *(pct(k["validation_pooled"][n]) for n in names), ""))
    rule = next((v["selection_rule"]["tie_rule"] for v in k["selection"].values() if v.get("selection_rule")), None)
    return (f"{k['folds']} folds, every question dev once; phase C chosen per fold by its accuracy on a validation "
            "split carved from that fold's train (no stage trains on it), never on dev, and never a degenerate "
            "candidate" + (f"; ties: {rule}" if rule else "") + ".\n\n" + table(("fold", *names, "chosen"), rows))


def fig_ablations(s):
    a = s["ablations"]
    if all(a.get(k) is None for k in ("draft", "nodraft", "shuffled")):
        return None
    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    _bars(ax1, ["draft", "nodraft", "shuffled", "noconcl."], [a.get(k) for k in ("draft", "nodraft", "shuffled", "noconclusion")])
    ax1.set(ylim=(0, 1), ylabel="dev accuracy", title="draft ablations (95 % CI)")
    keys = ["draft_minus_nodraft", "draft_minus_shuffled", "noconclusion_minus_nodraft"]
    _bars(ax2, ["draft − nodraft", "draft − shuffled", "noconcl. − nodraft"], [a.get(k) for k in keys], "diff",
          "tab:orange")
    for x, k in enumerate(keys):
        if a.get(k):
            ax2.text(x, a[k]["ci_low"], f"p={a[k]['mcnemar_p']:.2g}", ha="center", va="top", fontsize=8)
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set(ylabel="accuracy difference", title="paired differences (95 % CI)")
    fig.tight_layout()
    return fig


def attribution_md(s):
    att = s.get("attribution_draft_share") or {}
    rows = [(w.replace("_", " "), NOT_RUN, "", "", "") if e is None else
            (w.replace("_", " "), pct(e["share"]), ci(e), e["n"], f"`{e.get('file', '')}`")
            for w, e in (("before_dpo", att.get("before_dpo")), ("after_dpo", att.get("after_dpo")))]
    return ("Share of the final answer's Integrated-Gradients attribution on the draft tokens "
            "(target ≥ 20 % after DPO).\n\n" + table(("model", "draft share", "95 % CI", "n", "source"), rows))


def fig_attribution(s):
    att = s.get("attribution_draft_share") or {}
    if not any(att.values()):
        return None
    fig = Figure(figsize=(4.5, 3.5))
    ax = fig.add_subplot()
    _bars(ax, ["before DPO", "after DPO"], [att.get("before_dpo"), att.get("after_dpo")], "share", "tab:green")
    ax.axhline(0.2, color="gray", ls=":", lw=1)
    ax.set(ylim=(0, 1), ylabel="draft share of |attribution|", title="attribution on the draft (95 % CI)")
    return fig


def judge_md(s):
    j = s.get("judge")
    if j is None:
        return f"Judge: {NOT_RUN}."
    return table(("model 1 vs model 2", "judge model", "win-rate of model 1", "95 % CI", "n", "source"),
                 [(f"{j.get('model_1')} vs {j.get('model_2')}", j["judge_model"], pct(j["win_rate"]),
                   ci(j) if j["win_rate"] is not None else "", j["n"], f"`{j.get('file', '')}`")])


def fig_judge(s):
    j = s.get("judge")
    if j is None or j["win_rate"] is None:
        return None
    fig = Figure(figsize=(4, 3.5))
    ax = fig.add_subplot()
    _bars(ax, [f"{j.get('model_1')} vs {j.get('model_2')}"], [j], "win_rate", "tab:purple")
    ax.axhline(0.5, color="gray", ls=":", lw=1)
    ax.set(ylim=(0, 1), ylabel="win-rate (ties half)", title=f"judge: {j['judge_model']} (95 % CI)")
    return fig


QQ_LABELS = {"question": "the question alone (no asking)", "gold_decomposition": "StrategyQA's gold decomposition"}


def question_quality_md(s):
    q = s.get("question_quality")
    if q is None:
        return f"Question quality: {NOT_RUN}."
    rows = [(QQ_LABELS.get(name, f"{name}'s own sub-questions"), f"{r['mean']:.3f}",
             f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]", r["n"]) for name, r in q["recall"].items()]
    diffs = [(name, f"{d['diff']:+.3f}", f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]", f"{d['better']} / {d['worse']}",
              f"{d['sign_test_p']:.2g}") for name, d in q["differences"].items()]
    return (f"Recall@{q['k']} of each question's own gold facts when the queries below search a BM25 store of "
            f"the StrategyQA facts (`{q['file']}`): does the model ask for what the answer needs?\n\n"
            + table(("queries", f"recall@{q['k']}", "95 % CI", "n"), rows) + "\n\n"
            + table(("paired difference", "diff", "95 % CI", "better / worse questions", "sign test p"), diffs))


def fig_question_quality(s):
    q = s.get("question_quality")
    if q is None:
        return None
    fig = Figure(figsize=(1.2 + 0.9 * len(q["recall"]), 3.5))
    ax = fig.add_subplot()
    _bars(ax, [QQ_LABELS.get(n, n).split(" (")[0].replace("StrategyQA's ", "") for n in q["recall"]],
          list(q["recall"].values()), "mean", "tab:orange")
    ax.set(ylim=(0, 1), ylabel=f"recall@{q['k']} of the gold facts", title="question quality (95 % CI)")
    return fig


def answered_md(s):
    a = s.get("answered")
    if not a:
        return f"Answered drafts: {NOT_RUN}."
    head = ("The draft's sub-questions answered from the fact store, which holds every question's own facts "
            "(an open book, as Self-Ask's search engine), against no draft and the two retrieval controls.\n\n")
    rows, diffs = [], []
    for stage, b in a.items():
        rows += [(stage, k, pct(e["accuracy"]), ci(e), e["n"], answers(e)) for k, e in b.items() if "_minus_" not in k]
        diffs += [(f"{stage}: {k.replace('_minus_', ' − ')}", e) for k, e in b.items() if "_minus_" in k]
    return head + table(("stage", "prompt", "accuracy", "95 % CI", "n", "answers \"yes\""), rows) + "\n\n" + diff_table(diffs)


def provenance_md(s):
    p = s["provenance"]
    hashes = [(f"`{k}`", f"`{v}`") for k, v in {**p["recipes_sha256"], **p["data_sha256"]}.items()]
    walls = [(st, f"{w:.0f}", f"{p['stage_wall_s'][st]:.0f}" if st in p.get("stage_wall_s", {}) else "")
             for st, w in p["eval_wall_s"].items()]
    evals = [(f"`{k}`", Path(e["base"]).name, e["adapter"] or "", (e["dev_sha256"] or "")[:12],
              (e["drafts_sha256"] or "")[:12], e["run_started"]) for k, e in p["evals"].items()]
    return "\n\n".join([
        f"Commit `{p['git_commit']}`, device(s) {', '.join(p['devices'])}, summary written {s['date']}.",
        table(("package", "version"), [(k, v or "not installed") for k, v in p["packages"].items()]),
        table(("file", "sha256"), hashes),
        table(("stage", "eval wall s", "training wall s"), walls),
        table(("eval", "base", "adapter", "dev sha256", "drafts sha256", "started"), evals)])


SECTIONS = {  # name: (title, markdown, figure, png)
    "stages": ("Accuracy by stage", stages_md, fig_stages, "accuracy_by_stage.png"),
    "ablations": ("Draft ablations", ablations_md, fig_ablations, "ablations.png"),
    "oracle": ("Oracle ladder", oracle_md, fig_oracle, "oracle.png"),
    "kfold": ("Folds and the choice of phase C", kfold_md, None, None),
    "attribution": ("Attribution on the draft", attribution_md, fig_attribution, "attribution.png"),
    "judge": ("Judge: clarifying questions", judge_md, fig_judge, "judge.png"),
    "question_quality": ("Question quality: do the sub-questions find the facts?", question_quality_md,
                         fig_question_quality, "question_quality.png"),
    "answered": ("Drafts answered from the fact store", answered_md, None, None),
    "provenance": ("Provenance", provenance_md, None, None),
}


def section(name, summary, root=None, link_prefix=""):
    """(markdown, figure or None) of one section; `root` (results/<model>) adds the heatmap
    PNGs found there, linked as link_prefix + their path relative to root."""
    md = SECTIONS[name][1](summary)
    if name == "attribution" and root is not None:
        maps = sorted(Path(root).glob("attribution/**/*.png"))
        md += "".join(f"\n\n![{p.stem}]({link_prefix}{p.relative_to(root).as_posix()})" for p in maps)
    fig = SECTIONS[name][2](summary) if SECTIONS[name][2] else None
    return md, fig


def png_bytes(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def write_report(model, results="results"):
    """Write results/<model>/report.md and its PNGs; returns the report's path."""
    s, root = load_summary(model, results), Path(results) / model
    parts = [f"# {model}: evaluation report\n\n{CI_NOTE}"]
    if s.get("random_weights"):
        parts.append(f"**Not results.** {s['random_weights']} Every accuracy, "
                     "difference, attribution share and verdict below is of that model and says nothing "
                     "about the method.")
    for name, (title, _, _, png) in SECTIONS.items():
        md, fig = section(name, s, root)
        parts.append(f"## {title}\n\n{md}")
        if fig is not None:
            with atomic_open(root / png, "wb") as f:
                f.write(png_bytes(fig))
            parts.append(f"![{title}]({png})")
    out = root / "report.md"
    with atomic_open(out) as f:
        f.write("\n\n".join(parts) + "\n")
    return out


def add_cli(sub):
    p = sub.add_parser("report", help="report.md + PNG plots from results/<model>/summary.json")
    p.add_argument("--model-name", required=True)
    p.add_argument("--results", type=Path, default=Path("results"))
    p.set_defaults(func=lambda a: print(f"-> {write_report(a.model_name, a.results)}") or 0)


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(prog="askdraft-report")
    add_cli(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args()
    try:
        sys.exit(args.func(args))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
