"""A sample plugin that reserves the `ledger` event namespace (written by its own code only)."""

from brain.plugins import hookimpl


@hookimpl
def reserve_event_types(reserve):
    reserve("ledger")
