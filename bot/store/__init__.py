"""The SQLite store: exchanges, feedback, dedupe keys, migrations and PII scrubbing."""
