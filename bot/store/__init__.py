"""The store (SQLite file or PostgreSQL): exchanges, feedback, dedupe keys, questions, migrations, PII scrubbing."""
