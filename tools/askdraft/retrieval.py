"""A BM25 store of the StrategyQA facts (bm25s), searched by a draft's sub-questions.

The store holds the distinct facts of data/strategyqa/decompositions.jsonl (every question's
`facts`; 6,106 distinct over all 2,290 rows), or only those of the questions it is given (e.g.
the training questions, so that pairs built from its scores never see a dev fact). The facts
are kept sorted by their text as shipped: the store's order is then a function of what it holds alone,
and BM25 ties (frequent for short queries) are broken the same way on every machine.

Scoring is bm25s's default BM25 (Lucene's variant, k1 1.5, b 0.75) over bm25s's tokenizer:
lower-cased words of two or more characters, bm25s's English stopwords removed, no stemming.
`search(queries, k)` ranks the facts for each query and merges the rankings round-robin
(each query's best, then each one's second, ...), skipping facts already taken, until k
facts: asking several sub-questions spends the same k as asking one. A query with no word
in the store's vocabulary, and a fact that scores 0 for a query, contribute nothing.

    store = FactStore.build()                          # all facts
    store = FactStore.build(questions=train_questions, questions_label="data/strategyqa_train_cot.jsonl")
    store.search(["Where is the Mona Lisa?", "Is the Louvre near restaurants?"], k=5)
    store.gold("After viewing the Mona Lisa, could you get lunch nearby on foot?")   # its own facts
    store.describe()                                   # what it holds: put it in every output
"""
import hashlib
import os
from pathlib import Path

from askdraft import REPO_ROOT
from askdraft.data import DECOMPOSITIONS, load_decompositions
from askdraft.io import InputError, sha256_file
from askdraft.records import norm_question

STOPWORDS = "en"  # bm25s's English list
DEFAULT_K = 5


def relative(path):
    """A path as outputs record it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def import_bm25s():
    """bm25s, with JAX (if installed) kept on the CPU: bm25s runs a JAX top-k as it is imported,
    and JAX on a GPU takes 75 % of the card's memory at once, outside any torch cap (seen at 105
    GiB of an H200 in an eval process). The store ranks with numpy either way."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import bm25s

    return bm25s


def tokenize(texts):
    """bm25s's tokenizer as the store uses it: [[word]] per text (stopwords removed)."""
    bm25s = import_bm25s()

    return bm25s.tokenize(list(texts), lower=True, stopwords=STOPWORDS, return_ids=False, show_progress=False)


def recall(found, gold):
    """Share of the gold facts among the found ones (gold: a non-empty collection)."""
    gold = set(gold)
    if not gold:
        raise ValueError("recall of an empty gold set")
    return len(gold & set(found)) / len(gold)


def round_robin(rankings, k):
    """The first k distinct items of the rankings read rank by rank across them
    (rankings[0][0], rankings[1][0], ..., rankings[0][1], ...)."""
    out, seen = [], set()
    depth = max((len(r) for r in rankings), default=0)
    for j in range(depth):
        for ranking in rankings:
            if j < len(ranking) and ranking[j] not in seen:
                seen.add(ranking[j])
                out.append(ranking[j])
                if len(out) == k:
                    return out
    return out


class FactStore:
    """Facts, their BM25 index, and each held question's gold facts and decomposition."""

    def __init__(self, table, source, questions_label="all"):
        bm25s = import_bm25s()

        self.table = table  # {normalised question: decomposition row}
        self.source = relative(source)
        self.source_sha256 = sha256_file(source)
        self.questions_label = questions_label
        # sorted by the text as shipped (some facts end in spaces), then stripped: the order that
        # breaks ties, and the one the committed recall numbers were measured with
        shipped = sorted({f for row in table.values() for f in row["facts"]})
        self.facts = list(dict.fromkeys(f.strip() for f in shipped))
        if not self.facts:
            raise InputError(source, None, "the store would hold no facts")
        self.index = {f: i for i, f in enumerate(self.facts)}
        self.bm25 = bm25s.BM25()
        self.bm25.index(tokenize(self.facts), show_progress=False)
        self.vocab = {w for w in self.bm25.vocab_dict if w}

    @classmethod
    def build(cls, path=DECOMPOSITIONS, questions=None, questions_label=None):
        """The store of every question's facts in `path`, or of `questions`' only (each must be
        in `path`; questions_label says where they came from, e.g. a split file)."""
        table = load_decompositions(path)
        if questions is None:
            return cls(table, path)
        held = {}
        for q in questions:
            key = norm_question(q)
            if key not in table:
                raise InputError(path, None, f"no facts for question {q[:80]!r} ({questions_label or 'questions'})")
            held[key] = table[key]
        if not held:
            raise InputError(questions_label or "questions", None, "no questions to hold facts for")
        return cls(held, path, questions_label or f"{len(held)} given questions")

    @classmethod
    def for_split(cls, split_path, path=DECOMPOSITIONS):
        """The store of one split file's questions (e.g. data/strategyqa_train_cot.jsonl)."""
        from askdraft.records import read_split

        return cls.build(path, [r["question"] for r in read_split(split_path)], str(split_path))

    def describe(self):
        """What the store holds, for every output that uses it."""
        facts_sha = hashlib.sha256("\n".join(self.facts).encode("utf-8")).hexdigest()
        questions_sha = hashlib.sha256("\n".join(sorted(self.table)).encode("utf-8")).hexdigest()
        return {"source": self.source, "source_sha256": self.source_sha256, "questions": self.questions_label,
                "n_questions": len(self.table), "questions_sha256": questions_sha, "n_facts": len(self.facts),
                "facts_sha256": facts_sha, "bm25": "bm25s lucene k1=1.5 b=0.75, English stopwords, no stemmer",
                "merge": "round-robin over the queries' rankings, deduplicated; facts sorted by text break ties"}

    def holds(self, question):
        return norm_question(question) in self.table

    def _row(self, question):
        row = self.table.get(norm_question(question))
        if row is None:
            raise KeyError(f"the store holds no facts of question {question[:80]!r} ({self.questions_label})")
        return row

    def gold(self, question):
        """The question's own facts (distinct, in the decomposition file's order)."""
        return list(dict.fromkeys(f.strip() for f in self._row(question)["facts"]))

    def decomposition(self, question):
        """StrategyQA's sub-questions for the question (the gold decomposition)."""
        return list(self._row(question)["decomposition"])

    def rankings(self, queries, k=DEFAULT_K):
        """Per query, the indices of its top-k facts by BM25 (score > 0 only)."""
        k = min(k, len(self.facts))
        tokens = [[w for w in t if w in self.vocab] for t in tokenize(queries)]
        live = [i for i, t in enumerate(tokens) if t]
        out = [[] for _ in queries]
        if live:
            docs, scores = self.bm25.retrieve([tokens[i] for i in live], k=k, show_progress=False,
                                               backend_selection="numpy")
            for row, i in enumerate(live):
                out[i] = [int(d) for d, s in zip(docs[row], scores[row]) if s > 0]
        return out

    def search(self, queries, k=DEFAULT_K):
        """The top-k facts (texts) for a list of queries, merged round-robin, deduplicated."""
        if isinstance(queries, str):
            queries = [queries]
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return [self.facts[i] for i in round_robin(self.rankings(list(queries), k), k)]

    def recall(self, question, queries, k=DEFAULT_K):
        """recall@k of the question's own gold facts when `queries` search the store."""
        return recall(self.search(queries, k), self.gold(question))

