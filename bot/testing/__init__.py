"""Reusable test helpers (a fake Slack, request signing, payload builders) for domain owners' tests."""
