"""Fake google.colab.errors: the same classes as the real module."""


class Error(Exception):
    """Base class for all Colab errors."""


class AuthorizationError(Error):
    """Authorization-related failures."""
