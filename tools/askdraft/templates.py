"""Render the Jinja files in prompt_templates/: the one source of every prompt string."""
import functools
import re
import os
from pathlib import Path

import jinja2

from askdraft import REPO_ROOT

TEMPLATE_DIR = Path(os.environ.get("ASKDRAFT_TEMPLATES", REPO_ROOT / "prompt_templates"))
ANSWERS = ("yes", "no")
# What the student writes at the end of its draft, and what ends a draft when generating.
TENTATIVE_RE = re.compile(r"Tentative answer:\s*(yes|no)\b", re.IGNORECASE)
DRAFT_STOP = "\nFinal answer:"
# One line of the `steps` block of draft.jinja: "Q: sub-question" then " A: short answer" if any.
STEP_RE = re.compile(r"^Q:\s*(.*?)(?:\s+A:(?:\s+(.*))?)?$")


@functools.cache
def _env():
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


def render(name, block=None, **variables):
    """Render a whole template, or one of its `{% block %}`s (e.g. "prompt", "completion")."""
    template = _env().get_template(name)
    if block is None:
        return template.render(**variables)
    ctx = template.new_context(variables)
    return "".join(template.blocks[block](ctx))


def answer_prompt(question, draft=None):
    return render("answer.jinja", "prompt", question=question, draft=draft)


def answer_completion(answer):
    return render("answer.jinja", "completion", question="", answer=answer)


def draft_prompt(question):
    return render("draft.jinja", "prompt", question=question)


def draft_completion(rationale, answer, form="tentative"):
    return render("draft.jinja", "completion", question="", rationale=rationale, answer=answer,
                  conclude=concludes(form))


def teacher_draft(steps):
    """The teacher draft's body: one "Q: sub-question A: short answer" line per step."""
    return render("draft.jinja", "steps", question="", steps=steps)


def draft_text(rationale, answer, form="tentative"):
    """The draft part of phase B's target (rationale + tentative answer), without the final."""
    return render("draft.jinja", "draft", question="", rationale=rationale, answer=answer,
                  conclude=concludes(form)).strip()


# The draft forms phase B teaches (`askdraft data --draft-form`): the seed's self-answered draft
# ending in "Tentative answer: x", or the sub-questions and their answers with no conclusion.
DRAFT_FORMS = ("tentative", "questions")


def concludes(form):
    """Whether drafts of this form state a tentative answer."""
    if form not in DRAFT_FORMS:
        raise ValueError(f"unknown draft form {form!r}; choose from {DRAFT_FORMS}")
    return form == "tentative"


def parse_tentative(draft):
    """The draft's tentative yes/no (its last one), or None if it states none."""
    found = TENTATIVE_RE.findall(draft or "")
    return found[-1].lower() if found else None


def parse_steps(draft):
    """[{q, a}] of a draft's "Q: ... A: ..." lines (the inverse of teacher_draft); a line
    without " A:" gives a = "". Lines that are not steps (the tentative answer, noise) are skipped."""
    steps = []
    for line in (draft or "").split("\n"):
        m = STEP_RE.match(line.strip())
        if m and m.group(1).strip():
            steps.append({"q": m.group(1).strip(), "a": (m.group(2) or "").strip()})
    return steps


def draft_questions(draft):
    """The sub-questions a draft asks, in order."""
    return [s["q"] for s in parse_steps(draft)]


def strip_tentative(draft):
    """The draft without its tentative conclusion(s): the content alone."""
    return TENTATIVE_RE.sub("", draft or "").strip()


def flip_tentative(draft):
    """The same draft with its (last) tentative conclusion flipped."""
    matches = list(TENTATIVE_RE.finditer(draft))
    if not matches:
        raise ValueError("draft states no tentative answer")
    m = matches[-1]
    flipped = "no" if m.group(1).lower() == "yes" else "yes"
    return draft[: m.start(1)] + flipped + draft[m.end(1):]
