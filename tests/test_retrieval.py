"""The fact store (askdraft.retrieval): its BM25 against a hand computation, the round-robin
merge, gold-fact lookup and what it says it holds."""
import json
import os
import subprocess
import sys
import math
import re

import pytest

from askdraft import templates
from askdraft.io import InputError
from askdraft.retrieval import FactStore, recall, round_robin

TOY = [
    {"question": "Do penguins live near the north pole?", "answer": "no",
     "decomposition": ["Where do penguins live?", "Is #1 near the north pole?"],
     "facts": ["Penguins live in the southern hemisphere, mostly in Antarctica.",
               "The north pole is in the Arctic ocean. "]},  # a trailing space, as some shipped facts have
    {"question": "Could a giraffe reach a basketball hoop?", "answer": "yes",
     "decomposition": ["How tall is a giraffe?", "How high is a basketball hoop?", "Is #1 greater than #2?"],
     "facts": ["An adult giraffe is about 5 metres tall.", "A basketball hoop hangs 3 metres high.",
               "Giraffes eat acacia leaves from tall trees."]},
    {"question": "Is coffee made from a berry?", "answer": "yes",
     "decomposition": ["What is coffee made from?", "Is #1 a berry?"],
     "facts": ["Coffee beans are the seeds of the coffee cherry.", "A coffee cherry is a berry."]},
    {"question": "Would a snowman melt in the Sahara?", "answer": "yes",
     "decomposition": ["What is the Sahara's temperature?", "Does snow melt at #1?"],
     "facts": ["The Sahara desert often passes 40 degrees Celsius.", "Snow melts above 0 degrees Celsius.",
               "A coffee cherry is a berry."]},  # a fact two questions share: held once
]


def write_toy(path, rows=TOY):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def toy(tmp_path):
    return write_toy(tmp_path / "decompositions.jsonl")


def words(text):
    """The tokenizer written out: lower-case runs of 2+ word characters, English stopwords out."""
    from bm25s.stopwords import STOPWORDS_EN
    return [w for w in re.findall(r"\w\w+", text.lower()) if w not in set(STOPWORDS_EN)]


def hand_bm25(docs, query, k1=1.5, b=0.75):
    """Lucene's BM25 of every doc for the query, from its formula: idf = ln(1 + (N - df + 0.5) /
    (df + 0.5)), term weight tf / (tf + k1 (1 - b + b dl / avgdl)) (Lucene 8+ drops the constant
    k1 + 1 of the classic numerator), summed over the query's distinct words."""
    toks = [words(d) for d in docs]
    n, avgdl = len(docs), sum(map(len, toks)) / len(docs)
    scores = []
    for t in toks:
        s = 0.0
        for w in set(words(query)):
            df = sum(w in u for u in toks)
            if df == 0:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            tf = t.count(w)
            s += idf * tf / (tf + k1 * (1 - b + b * len(t) / avgdl))
        scores.append(s)
    return scores


def hand_top(docs, query, k):
    scores = hand_bm25(docs, query)
    order = sorted((i for i in range(len(docs)) if scores[i] > 0), key=lambda i: -scores[i])
    return order[:k], scores


QUERIES = ["Where do penguins live?", "How tall is a giraffe?", "Is coffee made from a berry?",
           "What melts snow in the Sahara desert?", "Do giraffes eat leaves from trees?",
           "Which hemisphere has the Arctic ocean and the north pole?"]


@pytest.mark.parametrize("query", QUERIES)
def test_bm25_ranking_matches_the_formula(toy, query):
    store = FactStore.build(toy)
    ranked = store.rankings([query], k=4)[0]
    top, scores = hand_top(store.facts, query, 4)
    # the same facts in the same order wherever the hand scores are not tied
    assert [round(scores[i], 4) for i in ranked] == [round(scores[i], 4) for i in top]
    assert sorted(ranked) == sorted(top) or len({round(scores[i], 4) for i in top}) < len(top)
    bm = store.bm25.get_scores(words(query))
    assert [round(float(x), 4) for x in bm] == [round(s, 4) for s in scores]


def test_recall_against_hand_computation(toy):
    store = FactStore.build(toy)
    question = TOY[1]["question"]
    queries = ["How tall is a giraffe?", "How high is a basketball hoop?"]
    k = 2
    rankings = [hand_top(store.facts, q, k)[0] for q in queries]
    expected_found = round_robin(rankings, k)
    gold = {store.facts.index(f.strip()) for f in TOY[1]["facts"]}
    expected = len(gold & set(expected_found)) / len(gold)
    assert store.recall(question, queries, k=k) == pytest.approx(expected)
    assert expected == pytest.approx(2 / 3)  # the two facts it asked about, not the third
    assert store.recall(question, ["Do penguins live near the north pole?"], k=k) == 0.0


def test_round_robin_merge():
    assert round_robin([[1, 2, 3], [2, 4], [5]], 4) == [1, 2, 5, 4]
    assert round_robin([[1, 2, 3], [2, 4], [5]], 10) == [1, 2, 5, 4, 3]
    assert round_robin([[7, 8]], 1) == [7]
    assert round_robin([], 3) == [] and round_robin([[], []], 3) == []


def test_search_merges_queries_round_robin(toy):
    store = FactStore.build(toy)
    one = store.search(["How tall is a giraffe?"], k=3)
    two = store.search(["How tall is a giraffe?", "Is coffee made from a berry?"], k=3)
    assert one[0] == "An adult giraffe is about 5 metres tall."
    assert two[0] == one[0] and "coffee" in two[1].lower() and len(two) == 3 == len(set(two))
    assert store.search("How tall is a giraffe?", k=1) == one[:1]  # a single string is one query
    # a query of stopwords or unknown words finds nothing (no arbitrary zero-score facts)
    assert store.search(["Is it the?", "zebra quasar"], k=3) == []
    assert store.search(["Is it the?", "How tall is a giraffe?"], k=1) == one[:1]


def test_gold_lookup_and_what_the_store_holds(toy):
    store = FactStore.build(toy)
    d = store.describe()
    assert d["n_facts"] == 9 and d["n_questions"] == 4 and d["questions"] == "all"
    assert len(d["facts_sha256"]) == 64 and len(d["source_sha256"]) == 64
    assert store.gold("  could a GIRAFFE reach a basketball hoop? ") == [f for f in TOY[1]["facts"]]
    assert store.gold(TOY[0]["question"])[1] == "The north pole is in the Arctic ocean."  # stripped
    assert store.decomposition(TOY[2]["question"]) == TOY[2]["decomposition"]
    with pytest.raises(KeyError, match="holds no facts"):
        store.gold("Is this question unknown?")

    train = FactStore.build(toy, questions=[TOY[0]["question"], TOY[2]["question"]], questions_label="train.jsonl")
    t = train.describe()
    assert t["n_facts"] == 4 and t["n_questions"] == 2 and t["questions"] == "train.jsonl"
    assert t["facts_sha256"] != d["facts_sha256"] and t["questions_sha256"] != d["questions_sha256"]
    assert not train.holds(TOY[1]["question"]) and train.holds(TOY[0]["question"])
    assert all("giraffe" not in f.lower() for f in train.facts)
    assert all("giraffe" not in f.lower() for f in train.search(["How tall is a giraffe?", "tall trees"], k=4))
    with pytest.raises(InputError, match="no facts for question"):
        FactStore.build(toy, questions=["Is this question unknown?"])


def test_for_split_holds_that_split(toy, tmp_path):
    split = tmp_path / "train.jsonl"
    split.write_text("".join(json.dumps({"question": r["question"], "teacher_final": r["answer"]}) + "\n"
                             for r in TOY[:2]))
    store = FactStore.for_split(split, toy)
    assert store.describe()["n_questions"] == 2 and store.describe()["questions"] == str(split)


def test_recall_needs_gold():
    with pytest.raises(ValueError):
        recall(["a"], [])
    assert recall(["a", "b"], ["a", "c"]) == 0.5


def test_the_shipped_store():
    store = FactStore.build()
    d = store.describe()
    assert d["n_facts"] == 6106 and d["source"] == "data/strategyqa/decompositions.jsonl"
    q = "After viewing the Mona Lisa, could you get lunch nearby on foot?"
    assert store.gold(q) == ["The Mona Lisa is housed in The Louvre.",
                             "There are many restaurants within walking distance of The Louvre."]
    assert "The Mona Lisa is housed in The Louvre." in store.search(store.decomposition(q), k=5)


def test_draft_questions_parse_the_template():
    steps = [{"q": "Where is the Mona Lisa?", "a": "The Louvre."}, {"q": "Is #1 near food?", "a": ""}]
    draft = templates.draft_text(templates.teacher_draft(steps), "yes")
    assert templates.parse_steps(draft) == steps
    assert templates.draft_questions(draft) == ["Where is the Mona Lisa?", "Is #1 near food?"]
    assert templates.draft_questions("Tentative answer: no") == []
    assert templates.draft_questions("Q: What is it? A:\nnoise\n  Q:  Why? A: because") == ["What is it?", "Why?"]


def test_bm25s_keeps_jax_off_the_gpu():
    """bm25s runs a JAX top-k as it is imported; a JAX on a GPU would take 75 % of the card outside
    the torch cap, so the store imports it with JAX on the CPU (unless the user chose otherwise)."""
    code = ("import os; from askdraft import retrieval; retrieval.FactStore.build(); "
            "print(os.environ['JAX_PLATFORMS'], os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["cpu", "false"]
    env["JAX_PLATFORMS"] = "cuda"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "cuda"
