"""prompt_templates/: the strings every stage shares."""
from askdraft import templates as t


def test_answer_prompt_with_and_without_draft():
    assert t.answer_prompt("Is it?") == "Question: Is it?\nFinal answer:"
    assert t.answer_prompt("Is it?", "Facts.\nTentative answer: no") == \
        "Question: Is it? Student draft: Facts.\nTentative answer: no\nFinal answer:"
    assert [t.answer_completion(a) for a in t.ANSWERS] == [" yes", " no"]


def test_phase_b_target_is_draft_then_final():
    assert t.draft_prompt("Is it?") == "Question: Is it?\nDraft:"
    completion = t.draft_completion("Fact one.", "no")
    assert completion == " Fact one.\nTentative answer: no\nFinal answer: no"
    draft = completion.split(t.DRAFT_STOP)[0].strip()
    assert draft == t.draft_text("Fact one.", "no") and t.parse_tentative(draft) == "no"


def test_parse_and_flip_use_the_last_conclusion():
    draft = "Tentative answer: yes? Not sure.\nTentative answer: YES"
    assert t.parse_tentative(draft) == "yes"
    assert t.flip_tentative(draft) == "Tentative answer: yes? Not sure.\nTentative answer: no"
    assert t.parse_tentative("no conclusion here") is None


def test_teacher_draft_asks_then_concludes():
    body = t.teacher_draft([{"q": "What is X?", "a": "X is 3."}, {"q": "Is #1 odd?", "a": ""}])
    assert body == "Q: What is X? A: X is 3.\nQ: Is #1 odd?"
    draft = t.draft_text(body, "yes")
    assert draft == body + "\nTentative answer: yes" and t.strip_tentative(draft) == body
    assert t.answer_prompt("Is it?", "") == "Question: Is it? Student draft: \nFinal answer:"  # empty != none
