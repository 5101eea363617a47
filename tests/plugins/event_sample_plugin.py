"""A sample plugin for the event_stored hook: appends each committed event to a JSONL file.

The file is named by BRAIN_TEST_EVENTS_FILE (set by the test that enables this plugin).
"""

import json
import os

from brain.plugins import hookimpl


@hookimpl
def event_stored(user_id, event):
    with open(os.environ["BRAIN_TEST_EVENTS_FILE"], "a") as fh:
        fh.write(json.dumps({"user_id": user_id, "event": event}) + "\n")
