"""The Slack edge: ingress, events, answering, streaming, feedback and blocks."""
