"""brain in fifty lines: sign up (or in), post a note, then follow your events live.

    python examples/client.py you@example.com 'a long password' [http://127.0.0.1:3000 http://127.0.0.1:8080]

Needs only aiohttp. Prints every event as it commits; resumes after a dropped connection or an
expired token from the last event it printed (Last-Event-ID), so it misses nothing.
"""

import asyncio
import json
import sys

import aiohttp


async def token(http, auth, email, password):
    """A JWT for the account: sign in, or sign up the first time."""
    body = {"email": email, "password": password, "name": email.split("@")[0]}
    async with http.post(f"{auth}/api/auth/sign-in/email", json=body) as r:
        if r.status == 401:  # no such account yet
            async with http.post(f"{auth}/api/auth/sign-up/email", json=body) as r:
                return (await r.json())["jwt"]
        return (await r.json())["jwt"]


async def main(email, password, auth="http://127.0.0.1:3000", api="http://127.0.0.1:8080"):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=None)) as http:
        jwt = await token(http, auth, email, password)
        note = {"type": "note.created", "data": {"text": "hello from examples/client.py"}}
        async with http.post(f"{api}/events", json=note, headers={"Authorization": f"Bearer {jwt}"}) as r:
            print("posted", await r.json())
        last_id = "0"  # from the first event on; then from the last one printed
        while True:
            headers = {"Authorization": f"Bearer {jwt}", "Last-Event-ID": last_id}
            async with http.get(f"{api}/events/stream", headers=headers) as stream:
                event = None
                async for raw in stream.content:  # one SSE line at a time
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("id: "):
                        last_id = line[4:]
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event is None:
                        print(json.loads(line[6:]))
                    elif line.startswith("data: "):
                        print(f"stream ends: {event}")
                    elif not line:
                        event = None
            jwt = await token(http, auth, email, password)  # token-expired, too-slow, a restart: resume


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
