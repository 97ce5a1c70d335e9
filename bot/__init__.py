"""Domainbot: a Slack assistant that answers through domain plugins."""

__version__ = "0.1.0"
