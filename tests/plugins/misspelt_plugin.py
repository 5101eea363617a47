"""A sample plugin with a misspelt hook name: loading it must fail, naming it."""

from brain.plugins import hookimpl


@hookimpl
def register_mail_provider(register):  # the hook is register_mail_providers
    pass
