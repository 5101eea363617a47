"""The MCP door: a user's brain as a Model Context Protocol server, so an AI assistant can
search, read and write it (`/mcp` on the API listener).

Layout: `plugin` (its routes and the OAuth protected-resource document, through the core's
hooks), `settings` ([mcp]), `transport` (Streamable HTTP: JSON-RPC 2.0 over POST, signed session
ids, protocol version negotiation), `tools` (the tools, their schemas, what each one calls),
`resources` (`brain://` URIs), `threads` (a mail thread from its events), `arguments` (the
check of tool arguments against their input schemas).

It reaches a user's data only through `brain.contracts` (`EVENT_ACCESS` from the API role,
`MAIL_ACCOUNTS` from mail sync) and acts as the caller the API listener's guard checked: a JWT
or an API key, whose scopes decide which tools it sees and may call.
"""

from brain.plugins.manifest import Manifest

MANIFEST = Manifest(
    name="agents",
    hooks=("brain.agents.plugin",),
    settings="brain.agents.settings",
    listener="api",
    # Its tools read and write through the API role's stores; its route sits behind its guard.
    requires=("api",),
    description="the MCP server (/mcp): AI assistants search, read and write a user's brain",
)
