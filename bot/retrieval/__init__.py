"""Retrieval: documents → chunks → embeddings → FAISS + BM25 index → ranked passages."""
