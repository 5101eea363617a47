"""Webhooks: signed copies of a user's events, delivered to the URLs the user registers.

Layout: `plugin` (what webhooks add to a process, through the core's hooks), `settings`
([webhooks]), `state` (the per-process Webhooks object in the stash), `signing` (Standard
Webhooks headers and signatures), `db` (webhooks.db: endpoints, the delivery queue, attempts),
`queue` (the DeliveryQueue actor that owns webhooks.db and fills it from the commit log),
`sender` (the WebhookSender: HTTP deliveries on the event loop), `routes` and `openapi`.

It reads the users' commits through the `CommitLog` the API role offers (`brain.contracts`),
writes `webhook.disabled` through its `EventSink`, and its routes on the `api` listener get
that listener's bearer-token guard.
"""

from brain.plugins.manifest import Manifest

MANIFEST = Manifest(
    name="webhooks",
    hooks=("brain.webhooks.plugin",),
    settings="brain.webhooks.settings",
    listener="api",
    # The commit log, the event sink and the token guard are the API role's.
    requires=("api",),
    description="signed webhook deliveries of the users' events, from a durable queue",
)
