"""Mail sync: provider plugins, one `MailSync` actor per connected account, and the
connect / OAuth callback / status / disconnect routes on the API role's listener.

Layout: `plugin` (everything mail sync adds to a process, through the core's hooks), `service`
(the per-process MailService: registry, mail.db, connect flows), `provider` (the base class
provider plugins implement), `registry`, `engine` (one account's sync, page by page), `sync`
(the MailSync actor), `access_tokens` (OAuth access tokens, refreshed), `crypto`, `db` (mail.db), `routes` and `openapi`, `cli`
(`brain mail status`) and `hookspecs` (`register_mail_providers`).

It writes events through the `EventSink` another plugin offers (`brain.contracts`; the API
role's stores), and its routes on the `api` listener get that listener's bearer-token guard.
"""

from brain.plugins.manifest import Manifest

MANIFEST = Manifest(
    name="mail",
    hooks=("brain.mail.plugin",),
    settings="brain.mail.settings",
    hookspecs="brain.mail.hookspecs",
    commands="brain.mail.cli",
    listener="api",
    # The event sink and the bearer authenticator it uses are the API role's offer.
    requires=("api",),
    description="mail sync from Gmail, Outlook, IMAP into the users' event stores",
)
