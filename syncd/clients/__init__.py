"""Egress: one small async client per external API, over an injected httpx.AsyncClient.

Clients know nothing of the store. Each call returns the decoded answer or raises
:class:`~syncd.errors.TransientError` / :class:`~syncd.errors.PermanentError`.
"""
