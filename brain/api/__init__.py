"""The API role: cached-JWKS token checks, per-user event stores and their publishing.

Layout: `plugin` (everything the role adds to a process, through the core's hooks), `state`
(its per-process objects, in the stash), `jwks` (the JwksCache actor and its key snapshots),
`verifier` (the strict JWT check and its token cache), `api_keys` (API keys: their cache,
lookups and revocations), `events` (event validation, rendering, signed cursors), `user_store`
(the UserStore actor, one SQLite file per user), `store_manager` (StoreManager: virtual-actor
activation, LRU, the async and thread APIs), `outbox` + `publisher` + `bus` (committed events ->
the Doorbell -> the EventBus's Publisher -> JetStream), `routes` (the token guard and handlers),
`openapi` (their description), `metrics` (its Prometheus figures), `deletion` (what it forgets
of a deleted user), `hookspecs` (`event_stored`), and for cluster mode `cluster` (this node:
`placement`, which node holds each user, and `forwarding` of requests to it; docs/cluster.md)
with its command `brain cluster status` (`cli`, `cluster_admin`).

What it offers other plugins (through `brain.contracts`, never by import): an `EventSink`
(its stores) and a `BearerAuthenticator` (its JWT check); routes other plugins register on the
`api` listener get its bearer-token guard.
"""

from brain.plugins.manifest import Manifest

MANIFEST = Manifest(
    name="api",
    hooks=("brain.api.plugin",),
    commands="brain.api.cli",
    settings="brain.api.settings",
    hookspecs="brain.api.hookspecs",
    listener="api",
    description="bearer-JWT protected per-user event stores, published to JetStream",
)
