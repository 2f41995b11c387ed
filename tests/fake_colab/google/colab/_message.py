"""Fake google.colab._message: only the error the frontend's refusal raises."""

from google.colab import errors


class MessageError(errors.Error):
    """Raised on an error reply from the frontend (the real class, same base)."""
