from bot.retrieval.bm25 import BM25, terms


def test_terms_drop_stopwords_and_case():
    assert terms("What is the Governing LAW of ACME Corp?") == ["governing", "law", "acme", "corp"]


def test_rare_names_outrank_common_words():
    docs = [
        "ENDORSEMENT AGREEMENT governing law clause of Adams Golf",
        "DISTRIBUTION AGREEMENT governing law clause",
        "SUPPLY AGREEMENT governing law clause",
    ]
    index = BM25(docs)
    hits = index.search("adams golf governing law", k=3)
    assert hits[0][0] == 0 and hits[0][1] > hits[1][1]


def test_no_match_and_empty_index():
    assert BM25(["alpha beta"]).search("gamma") == []
    assert BM25([]).search("anything") == []
    assert BM25(["", "the of"]).search("the") == []


def test_k_limits_results():
    index = BM25([f"lease term {i}" for i in range(50)])
    assert len(index.search("lease", k=5)) == 5
