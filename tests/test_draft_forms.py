"""The conclusion-free draft form (`askdraft data --draft-form questions`): the data and its
manifest, phase B's rows, the drafts the student writes, the pairs they allow, and the
lm-eval prompts they are scored with (token for token what the DPO pairs train on)."""
import json

import pytest

from askdraft import data, drafts, evaluate, pairs, sft_data, summary, templates
from askdraft.io import InputError, write_jsonl
from conftest import strategyqa_split

N_SOURCE, N_TRAIN = 40, 30


@pytest.fixture(scope="module")
def questions_data(tmp_path_factory):
    """A questions-form split of 40 real questions (decomposition teacher)."""
    tmp = tmp_path_factory.mktemp("questions_form")
    rows = [json.loads(x) for x in (strategyqa_split() / "strategyqa_train_cot.jsonl").read_text().splitlines()[:N_SOURCE]]
    write_jsonl(tmp / "src.jsonl", [{"question": r["question"], "answer": r["teacher_final"]} for r in rows])
    manifest = data.build(tmp / "data", source=tmp / "src.jsonl", n_train=N_TRAIN, draft_form="questions")
    return tmp / "data", manifest


def test_templates_render_a_draft_without_conclusion():
    completion = templates.draft_completion("Q: What is X? A: X is 3.", "no", "questions")
    assert completion == " Q: What is X? A: X is 3.\nFinal answer: no"
    draft = completion.split(templates.DRAFT_STOP)[0].strip()
    assert draft == templates.draft_text("Q: What is X? A: X is 3.", "no", "questions")
    assert templates.parse_tentative(draft) is None
    # the default form is the seed's, unchanged
    assert templates.draft_completion("F.", "no") == " F.\nTentative answer: no\nFinal answer: no"
    with pytest.raises(ValueError, match="unknown draft form 'conclusion'"):
        templates.draft_completion("F.", "no", "conclusion")


def test_data_records_the_form_and_keeps_the_teacher_draft(questions_data, tmp_path):
    out, manifest = questions_data
    assert manifest["draft_form"] == "questions"
    assert json.loads((out / "MANIFEST.json").read_text())["draft_form"] == "questions"
    assert data.draft_form(out) == "questions" and data.draft_form(tmp_path) == "tentative"
    for r in map(json.loads, (out / data.FILES["cot"]).read_text().splitlines()):
        assert r["teacher_cot"] == templates.teacher_draft(r["teacher_steps"])
        assert "Tentative answer" not in r["teacher_cot"]
    with pytest.raises(InputError, match="--draft-form: unknown draft form 'answers'"):
        data.build(tmp_path / "x", source=out.parent / "src.jsonl", n_train=N_TRAIN, draft_form="answers")
    (tmp_path / "MANIFEST.json").write_text('{"draft_form": "open"}')
    with pytest.raises(InputError, match="MANIFEST.json: draft_form 'open' is not one of"):
        data.draft_form(tmp_path)


def test_phase_b_rows_have_no_conclusion_and_end_in_the_gold_answer(questions_data, smollm2_dir, tmp_path):
    out, _ = questions_data
    from lm_eval.tasks import TaskManager, get_task_dict

    from askdraft import REPO_ROOT

    with pytest.raises(InputError, match="MANIFEST.json: the data's draft_form is 'questions', not 'tentative'"):
        sft_data.build(out, smollm2_dir, tmp_path / "sft", expect_form="tentative")  # make's DRAFT_FORM guard
    assert not (tmp_path / "sft").exists()
    report = sft_data.build(out, smollm2_dir, tmp_path / "sft", max_len=512, expect_form="questions")
    assert report["draft_form"] == "questions" and report["phase_b_rows"] == N_TRAIN
    assert report["phase_b_rationales_shortened"] == 0
    tok = sft_data.load_tokenizer(smollm2_dir)
    cot = {templates.draft_prompt(r["question"]): r for r in map(json.loads, (out / data.FILES["cot"]).read_text().splitlines())}
    rows = [json.loads(x) for x in (tmp_path / "sft" / "phase_b.jsonl").read_text().splitlines()]
    for row in rows:
        prompt, completion = row["segments"][-2]["text"], row["segments"][-1]["text"]
        r = cot[prompt]
        assert "Tentative answer" not in completion
        assert completion == f" {r['teacher_cot']}\nFinal answer: {r['teacher_final']}{tok.eos_token}"
    # the generative strategyqa_cot task over the same questions scores exactly these prompts
    tm = TaskManager(include_path=str(REPO_ROOT / "lm_eval_tasks"), metadata={"dev": str(out / data.FILES["cot"])})
    cot = get_task_dict(["strategyqa_cot"], tm)["strategyqa_cot"]
    assert sorted(cot.doc_to_text(d) for d in cot.test_docs()) == sorted(r["segments"][-2]["text"] for r in rows)
    # the default form of the same rows still concludes
    tentative_rows, _, _ = sft_data.phase_b_rows(out / data.FILES["cot"], tok, 512)
    assert all("\nTentative answer: " in r["segments"][-1]["text"] for r in tentative_rows)


def test_drafts_of_the_form_are_no_conclusion_not_unparsed(questions_data, tiny_llama_dir, tmp_path):
    out, _ = questions_data
    report = drafts.run(tiny_llama_dir, "tiny", splits=("dev",), data=out, out_root=tmp_path, batch_size=4,
                        max_new_tokens=6)
    rows = [json.loads(x) for x in (tmp_path / "tiny" / "dev.jsonl").read_text().splitlines()]
    assert len(rows) == N_SOURCE - N_TRAIN
    for r in rows:
        assert r["tentative"] == (templates.parse_tentative(r["draft"]) or "none")
    none = sum(r["tentative"] == "none" for r in rows)
    assert none and report["dev"]["no_conclusion"] == none and report["dev"]["unparsed"] == 0
    assert json.loads((tmp_path / "tiny" / "REPORT.json").read_text())["draft_form"] == "questions"
    rows = [drafts.draft_row("a", "Q: x? A: y.", "yes", "questions"), drafts.draft_row("b", "Q: z?", "no", "questions")]
    assert drafts.counts(rows) == {"n": 2, "unparsed": 0, "no_conclusion": 2, "empty": 0, "tentative_accuracy": None}


def conclusion_free_drafts(path, split_file):
    rows = [json.loads(x) for x in split_file.read_text().splitlines()]
    write_jsonl(path, [drafts.draft_row(r["question"], r["teacher_cot"], r["teacher_final"], "questions")
                       for r in rows])
    return path


def test_pairs_answer_mode_works_draft_mode_says_why_not(questions_data, tmp_path):
    out, _ = questions_data
    gold = out / data.FILES["cot"]
    path = conclusion_free_drafts(tmp_path / "train.jsonl", gold)
    with pytest.raises(InputError, match=r"train.jsonl:1: 30 draft\(s\) of the conclusion-free form .*use --mode answer or quality"):
        pairs.build(path, gold, mode="draft")
    got, report = pairs.build(path, gold, mode="answer")
    assert len(got) == N_TRAIN and report["unparsed_drafts"] == 0 and report["no_conclusion_drafts"] == N_TRAIN
    assert report["student_tentative_accuracy"] is None and report["dropped"]["unparsed"] == 0
    for p in got:
        assert p["student_tentative"] == "none" and not p["flipped"]
        assert p["chosen"] == templates.answer_completion(p["gold"]) and p["rejected"] != p["chosen"]
    pairs.write(got, report, tmp_path / "pairs.jsonl")  # records.check_pair accepts "none"


def test_overrides_of_conclusion_free_drafts_is_none():
    rows = [{"question": "a", "answer": "yes", "pred": "yes", "correct": 1, "tentative": "none"}]
    assert summary.overrides(rows) is None


def test_scored_prompt_is_the_pair_prompt_token_for_token(questions_data, smollm2_dir, tmp_path):
    """lm-eval's strategyqa_draft over conclusion-free drafts: its context and continuation,
    encoded by lm-eval's own HFLM, are the answer-mode pair's prompt and chosen tokens; and
    and tokens of the pair's prompt alone are lm-eval's context."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    from askdraft import REPO_ROOT

    out, _ = questions_data
    dev = out / data.FILES["dev"]
    path = conclusion_free_drafts(tmp_path / "dev.jsonl", dev)
    got, _ = pairs.build(path, dev, mode="answer")
    by_prompt = {p["prompt"]: p for p in got}
    tm = TaskManager(include_path=str(REPO_ROOT / "lm_eval_tasks"), metadata={"dev": str(dev), "drafts": str(path)})
    tasks = get_task_dict(["strategyqa_draft"], tm)
    lm = HFLM(pretrained=str(smollm2_dir), device="cpu", batch_size=1)
    docs = list(tasks["strategyqa_draft"].test_docs())
    assert len(docs) == len(got)
    for doc in docs:
        task = tasks["strategyqa_draft"]
        context = task.doc_to_text(doc)
        pair = by_prompt[context]  # the same string...
        assert "Tentative answer" not in context and doc["tentative"] == "none"
        gold = task.doc_to_choice(doc)[task.doc_to_target(doc)]
        assert gold == pair["chosen"]
        ctx_ids, cont_ids = lm._encode_pair(context, gold)  # ...and the same tokens
        assert ctx_ids + cont_ids == lm.tok_encode(pair["prompt"] + pair["chosen"])
        assert ctx_ids == lm.tok_encode(pair["prompt"])
