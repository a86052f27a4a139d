"""The answerer (`askdraft answer-drafts`, tasks strategyqa_answered_*): a draft's sub-questions
answered from the BM25 fact store, on a toy store whose right answers are plain, and through
lm-eval, token for token what the answer-mode DPO pairs of the same drafts train on."""
import json

import pytest

from askdraft import REPO_ROOT, answerer, pairs, templates
from askdraft.io import InputError, write_jsonl
from askdraft.retrieval import FactStore
from conftest import strategyqa_split

TOY = [
    {"question": "Is the Eiffel Tower taller than Big Ben?", "answer": "yes",
     "decomposition": ["How tall is the Eiffel Tower?", "How tall is Big Ben?", "Is #1 greater than #2?"],
     "facts": ["The Eiffel Tower is 330 metres tall.", "Big Ben's clock tower is 96 metres tall."]},
    {"question": "Could llamas ride bicycles?", "answer": "no",
     "decomposition": ["What do llamas have instead of hands?", "Do bicycles need hands to steer?"],
     "facts": ["Llamas have hooves instead of hands.", "Bicycles are steered with handlebars held by hands."]},
    {"question": "Did Mozart write symphonies?", "answer": "yes",
     "decomposition": ["How many symphonies did Mozart compose?"],
     "facts": ["Mozart composed 41 symphonies in Vienna and Salzburg."]},
]
EIFFEL, BIG_BEN = TOY[0]["facts"]


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "decompositions.jsonl"
    write_jsonl(path, TOY)
    return path, FactStore.build(path)


def test_each_sub_question_gets_the_fact_it_finds(toy):
    _, store = toy
    draft = "Q: How tall is the Eiffel Tower? A: very.\nQ: How tall is Big Ben? A: not very.\nTentative answer: no"
    got = answerer.answered_draft(store, TOY[0]["question"], draft, "draft", k=2)
    assert got == f"Q: How tall is the Eiffel Tower? A: {EIFFEL}\nQ: How tall is Big Ben? A: {BIG_BEN}"
    assert templates.parse_tentative(got) is None  # the student's conclusion does not survive
    # both queries rank the same two facts: round-robin takes each for the earlier query (the
    # later one's first is already taken), so the later query finds nothing new
    got = answerer.answered_draft(store, TOY[0]["question"], "Q: Eiffel Tower tall?\nQ: Eiffel Tower metres?", k=2)
    assert got == f"Q: Eiffel Tower tall? A: {EIFFEL} {BIG_BEN}\nQ: Eiffel Tower metres?"
    # a sub-question that finds nothing keeps no answer; a draft that asks nothing answers to ""
    got = answerer.answered_draft(store, TOY[1]["question"], "Q: What do llamas have instead of hands?\nQ: Why zzz?", k=3)
    assert got.split("\n")[0].startswith("Q: What do llamas have instead of hands? A: Llamas have hooves")
    assert got.split("\n")[1] == "Q: Why zzz?"
    assert answerer.answered_draft(store, TOY[1]["question"], "I think so.\nTentative answer: yes", k=3) == ""


def test_controls_question_alone_and_gold_decomposition(toy):
    _, store = toy
    q = TOY[1]["question"]
    alone = answerer.answered_draft(store, q, None, "question", k=2)
    head, facts = alone.split(" A: ", 1)
    assert head == f"Q: {q}" and alone.count("\n") == 0
    assert facts == " ".join(store.search([q], 2))  # the question's own top 2, in rank order
    gold = answerer.answered_draft(store, q, None, "gold_decomposition", k=2)
    assert gold == ("Q: What do llamas have instead of hands? A: Llamas have hooves instead of hands.\n"
                    "Q: Do bicycles need hands to steer? A: Bicycles are steered with handlebars held by hands.")
    # k is the whole budget: a one-query control and a many-query draft retrieve as many facts
    for text in (alone, gold):
        found = [f for f in store.facts if f in text]
        assert len(found) == 2


def test_answer_drafts_command_writes_rows_and_report(toy, tmp_path):
    path, store = toy
    drafts = tmp_path / "drafts.jsonl"
    write_jsonl(drafts, [{"question": TOY[0]["question"], "draft": "Q: How tall is Big Ben?\nTentative answer: yes",
                          "tentative": "yes", "answer": "yes"},
                         {"question": TOY[2]["question"], "draft": "", "tentative": "unparsed", "answer": "yes"}])
    out = tmp_path / "answered" / "dev.jsonl"
    report = answerer.run(out, drafts=drafts, k=1, decompositions=path)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows == [{"question": TOY[0]["question"], "draft": f"Q: How tall is Big Ben? A: {BIG_BEN}",
                     "tentative": "none", "answer": "yes"},
                    {"question": TOY[2]["question"], "draft": "", "tentative": "none", "answer": "yes"}]
    saved = json.loads((tmp_path / "answered" / "dev.report.json").read_text())
    assert saved == report and report["asked_nothing"] == 1 and report["store"]["n_facts"] == 5
    assert report["store"]["questions"] == "all" and report["k"] == 1
    with pytest.raises(InputError, match="--queries draft answers a drafts file's sub-questions"):
        answerer.run(tmp_path / "x.jsonl", split=drafts, decompositions=path)
    with pytest.raises(InputError, match="give exactly one"):
        answerer.run(tmp_path / "x.jsonl", decompositions=path)
    assert not (tmp_path / "x.jsonl").exists()


@pytest.fixture(scope="module")
def dev_inputs(tmp_path_factory):
    """The first 6 real dev questions and a drafts file for them (StrategyQA's sub-questions
    with another answer and a tentative answer: what a phase B draft looks like)."""
    tmp = tmp_path_factory.mktemp("answered")
    dev = [json.loads(x) for x in (strategyqa_split() / "strategyqa_dev.jsonl").read_text().splitlines()[:6]]
    write_jsonl(tmp / "dev.jsonl", dev)
    drafts = [{"question": r["question"], "answer": r["teacher_final"], "tentative": r["teacher_final"],
               "draft": "\n".join(f"Q: {s['q']} A: I do not know." for s in r["teacher_steps"][:2])
               + f"\nTentative answer: {r['teacher_final']}"} for r in dev]
    write_jsonl(tmp / "drafts.jsonl", drafts)
    return tmp


TASKS = {"strategyqa_answered_draft": "draft", "strategyqa_answered_question": "question",
         "strategyqa_answered_gold": "gold_decomposition"}


def test_tasks_score_the_answered_drafts_token_for_token(dev_inputs, smollm2_dir):
    """Each strategyqa_answered_* task (loaded by lm-eval's TaskManager from lm_eval_tasks/) scores
    the drafts `askdraft answer-drafts` writes; encoded by lm-eval's HFLM, its context and gold
    continuation are the tokens of the answer-mode pair built from that file."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    tmp = dev_inputs
    tm = TaskManager(include_path=str(REPO_ROOT / "lm_eval_tasks"),
                     metadata={"dev": str(tmp / "dev.jsonl"), "drafts": str(tmp / "drafts.jsonl")})
    assert set(TASKS) | {"strategyqa_answered"} <= set(tm.all_tasks)
    from askdraft.evaluate import _leaves

    tasks = _leaves(get_task_dict(["strategyqa_answered"], tm))  # the group's tasks
    assert set(tasks) == set(TASKS)
    lm = HFLM(pretrained=str(smollm2_dir), device="cpu", batch_size=1)
    for name, query_set in TASKS.items():
        out = tmp / name / "dev.jsonl"
        source = {"drafts": tmp / "drafts.jsonl"} if query_set == "draft" else {"split": tmp / "dev.jsonl"}
        report = answerer.run(out, query_set=query_set, **source)
        assert report["store"]["n_questions"] > 2000  # the open-book store: every question's facts
        got, _ = pairs.build(out, tmp / "dev.jsonl", mode="answer")
        by_prompt = {p["prompt"]: p for p in got}
        task = tasks[name]
        docs = list(task.test_docs())
        assert len(docs) == len(got) == 6
        for doc in docs:
            context = task.doc_to_text(doc)
            pair = by_prompt[context]
            assert " A: " in context and "I do not know" not in context and "Tentative answer" not in context
            gold = task.doc_to_choice(doc)[task.doc_to_target(doc)]
            assert gold == pair["chosen"]
            ctx_ids, cont_ids = lm._encode_pair(context, gold)
            assert ctx_ids + cont_ids == lm.tok_encode(pair["prompt"] + pair["chosen"])
            assert ctx_ids == lm.tok_encode(pair["prompt"])


def test_answered_draft_task_needs_the_drafts_file(dev_inputs):
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=str(REPO_ROOT / "lm_eval_tasks"), metadata={"dev": str(dev_inputs / "dev.jsonl")})
    with pytest.raises(InputError, match="this task needs the drafts file"):
        get_task_dict(["strategyqa_answered_draft"], tm)


def test_summary_block_pairs_the_answered_draft_with_no_draft_and_the_controls():
    qs = [f"q{i}" for i in range(20)]
    correct = {"strategyqa_answered_draft": [1] * 14 + [0] * 6, "strategyqa_answered_question": [1] * 10 + [0] * 10,
               "strategyqa_answered_gold": [1] * 16 + [0] * 4, "strategyqa_nodraft": [0] * 9 + [1] * 11}
    evals = {("B", t): ({}, dict(zip(qs, c))) for t, c in correct.items()}
    evals["A", "strategyqa"] = ({}, dict(zip(qs, [1] * 20)))
    block = answerer.summary(evals)
    assert list(block) == ["B"]
    b = block["B"]
    assert b["answered_draft"]["accuracy"] == pytest.approx(0.7) and b["answered_gold"]["n"] == 20
    assert b["answered_draft_minus_nodraft"]["diff"] == pytest.approx(0.7 - 0.55)
    assert b["answered_draft_minus_answered_question"]["diff"] == pytest.approx(0.2)
    assert b["answered_draft_minus_answered_gold"]["diff"] == pytest.approx(-0.1)
    assert answerer.summary({("A", "strategyqa"): ({}, {"q": 1})}) is None
