"""A sample plugin whose hook asks for an argument the hook does not have."""

from brain.plugins import hookimpl


@hookimpl
def validate_sign_up(email, password):
    return None
