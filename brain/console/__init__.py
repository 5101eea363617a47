"""The console: a web page for a person's brain, served by the API role at /console/.

Layout: `plugin` (its routes on the `api` listener), `settings` ([console]) and `static/` (the
page itself: plain HTML, CSS and ES modules, no build step). The page signs in at the auth role
(cookie session, JWTs from /api/auth/token) and reads everything else through the API's own
routes, like any other client: it adds no endpoint of its own.
"""

from brain.plugins.manifest import Manifest

MANIFEST = Manifest(
    name="console",
    hooks=("brain.console.plugin",),
    settings="brain.console.settings",
    listener="api",
    # It is a page of the API's origin and calls the API's routes.
    requires=("api",),
    description="the brain console: timeline, mail accounts and account pages in the browser",
)
