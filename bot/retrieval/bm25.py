"""A small BM25 index: the lexical half of hybrid retrieval.

Dense MiniLM vectors can't tell 35 near-identical contract clauses apart, but the contract or company
name in a question can. BM25 over title + text catches those names. The per-(term, chunk) weights are
precomputed into a sparse matrix, so a query is a few column sums: ~1 ms at 100k chunks.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from scipy import sparse

TOKEN_RE = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    "a an and are as at be by for from has have how i in is it its of on or that the this to was were what when "
    "which who why will with does do did can there their than any all not no yes".split()
)


def terms(text: str) -> list[str]:
    return [t for t in TOKEN_RE.findall(text.lower()) if t not in STOPWORDS and len(t) > 1]


class BM25:
    def __init__(self, texts: list[str], k1: float = 1.2, b: float = 0.75):
        self.vocab: dict[str, int] = {}
        rows, cols, tfs, lengths = [], [], [], []
        for i, text in enumerate(texts):
            counts = Counter(terms(text))
            lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                rows.append(i)
                cols.append(self.vocab.setdefault(term, len(self.vocab)))
                tfs.append(tf)
        self.n = len(texts)
        n_terms = max(1, len(self.vocab))
        if not rows:
            self.weights = sparse.csc_matrix((max(self.n, 1), n_terms), dtype=np.float32)
            return
        tf = np.asarray(tfs, dtype=np.float32)
        length = np.asarray(lengths, dtype=np.float32)
        avg = float(length.mean()) or 1.0
        df = np.bincount(cols, minlength=n_terms).astype(np.float32)
        idf = np.log1p((self.n - df + 0.5) / (df + 0.5))
        row_idx = np.asarray(rows)
        col_idx = np.asarray(cols)
        norm = tf + k1 * (1 - b + b * length[row_idx] / avg)
        values = idf[col_idx] * tf * (k1 + 1) / norm
        self.weights = sparse.csc_matrix((values, (row_idx, col_idx)), shape=(self.n, n_terms), dtype=np.float32)

    def df(self, term: str) -> int:
        """How many texts hold the term."""
        col = self.vocab.get(term)
        return 0 if col is None else int(self.weights.indptr[col + 1] - self.weights.indptr[col])

    def holders(self, term: str) -> list[int]:
        """The texts that hold the term, by position."""
        col = self.vocab.get(term)
        return [] if col is None else self.weights.indices[self.weights.indptr[col]:self.weights.indptr[col + 1]].tolist()

    def scores(self, query: str) -> np.ndarray:
        """Every text's score for the query (zeros when no query term is known)."""
        ids = [self.vocab[t] for t in set(terms(query)) if t in self.vocab]
        if not ids or self.n == 0:
            return np.zeros(self.n, dtype=np.float32)
        return np.asarray(self.weights[:, ids].sum(axis=1)).ravel()

    def search(self, query: str, k: int = 20) -> list[tuple[int, float]]:
        scores = self.scores(query)
        k = min(k, int(np.count_nonzero(scores)))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [(int(i), float(scores[i])) for i in top]
