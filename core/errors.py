"""Errors a user can act on. Each message says what was wrong and what to do about it.

The CLI prints them without a traceback; the app shows them in the page.
"""


class StudioError(Exception):
    """Base of every error whose message is meant for the user."""
