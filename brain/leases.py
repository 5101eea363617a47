"""Leases in a JetStream KV bucket: one holder per key at a time, kept by heartbeat, lost with it.

A lease is a key whose value names its holder. It is taken with a create (which JetStream
refuses if the key exists), renewed by rewriting it on the revision the holder last wrote
(refused if anyone else wrote since), and released by deleting it on that revision. The
bucket's TTL ages out a key nobody renewed: a holder that dies (kill -9, a lost machine) loses
its leases at most `ttl` seconds after its last renewal, and another process may take them.

A holder must itself stop acting on a lease it could not renew in time: `valid_until(key)`
says until when a lease it holds is certainly still its own (its last successful write plus
the TTL, minus a margin for the time the write took). The same code serves the workers of one
machine (brain.workers) and the nodes of a cluster sharing one NATS.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType

__all__ = ["Leases", "bucket_values"]

log = logging.getLogger("brain.leases")


class Leases:
    """The leases one holder (`owner`, unique per process) takes in one bucket."""

    def __init__(self, js: Any, bucket: str, *, ttl: float, owner: str, replicas: int = 1) -> None:
        self.js = js
        self.replicas = replicas  # copies of a bucket this holder creates (nats.replicas)
        self.bucket = bucket
        self.ttl = ttl
        self.owner = owner
        self.kv: Any = None
        self._held: dict[str, tuple[int, float]] = {}  # key -> (revision, valid until: time.monotonic)
        self._since: dict[str, float] = {}  # key -> since when (time.monotonic) held without a break
        self._value = json.dumps({"owner": owner}).encode()

    async def open(self) -> None:
        """Find the bucket, or create it with the TTL.

        A bucket made earlier with another TTL keeps it (other holders count on it): `ttl`
        becomes the bucket's, so that no lease is believed held after the bucket dropped it.
        """
        try:
            self.kv = await self.js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            config = KeyValueConfig(bucket=self.bucket, ttl=self.ttl, history=1, storage=StorageType.FILE,
                                    replicas=self.replicas)
            self.kv = await self.js.create_key_value(config=config)
            return
        found = (await self.kv.status()).ttl
        if found and abs(found - self.ttl) > 0.001:
            log.warning("lease bucket %s ages keys out after %ss, not the configured %ss: using its TTL",
                        self.bucket, found, self.ttl)
            self.ttl = found

    def held(self) -> list[str]:
        """The keys this holder believes it holds."""
        return list(self._held)

    def valid_until(self, key: str) -> float:
        """Until when (time.monotonic) a held lease is certainly ours; 0 if not held."""
        found = self._held.get(key)
        return found[1] if found else 0.0

    def held_since(self, key: str) -> float | None:
        """Since when (time.monotonic) this holder has held the lease without a break; None if not held."""
        return self._since.get(key) if key in self._held else None

    async def claim(self, key: str) -> bool:
        """Take the lease if nobody holds it; whether we hold it now."""
        if key in self._held:
            return await self.renew(key)
        started = time.monotonic()
        try:
            revision = await self.kv.create(key, self._value)
        except nats.js.errors.KeyWrongLastSequenceError:
            # Ours already (this process held it before its actor restarted): take it back.
            try:
                entry = await self.kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return False
            if _owner_of(entry.value) != self.owner:
                return False
            self._held[key] = (entry.revision, 0.0)
            self._since[key] = started
            return await self.renew(key)
        self._held[key] = (revision, started + self.ttl)
        self._since[key] = started
        return True

    async def renew(self, key: str) -> bool:
        """Keep a held lease; False (and forgotten) if it was lost meanwhile."""
        found = self._held.get(key)
        if found is None:
            return False
        started = time.monotonic()
        try:
            revision = await self.kv.update(key, self._value, last=found[0])
        except nats.js.errors.KeyWrongLastSequenceError:
            del self._held[key]
            self._since.pop(key, None)
            log.warning("lease %s/%s was lost (it expired, and another holder may have it)", self.bucket, key)
            return False
        self._held[key] = (revision, started + self.ttl)
        return True

    async def release(self, key: str) -> None:
        """Give a held lease up (best effort: unrenewed, it expires anyway)."""
        found = self._held.pop(key, None)
        self._since.pop(key, None)
        if found is None:
            return
        try:
            await self.kv.delete(key, last=found[0])
        except Exception as exc:  # noqa: BLE001 - it ages out within the TTL
            log.debug("releasing lease %s/%s: %r", self.bucket, key, exc)

    def forget_one(self, key: str) -> None:
        """Drop a lease without a word (it could not be renewed: it ages out, or is another's)."""
        self._held.pop(key, None)
        self._since.pop(key, None)

    async def holder(self, key: str) -> str | None:
        """Who holds the lease now (None: nobody)."""
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return _owner_of(entry.value)


async def bucket_values(js: Any, bucket: str, timeout: float = 5.0) -> dict[str, bytes] | None:
    """Every key's current value in a KV bucket (None: no such bucket)."""
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return None
    watcher = await kv.watchall()
    found: dict[str, bytes] = {}
    try:
        while True:
            entry = await watcher.updates(timeout=timeout)
            if entry is None:
                return found
            if entry.operation not in ("DEL", "PURGE") and entry.value:
                found[entry.key] = entry.value
    finally:
        await watcher.stop()


def _owner_of(value: bytes) -> str:
    try:
        return str(json.loads(value)["owner"])
    except (ValueError, KeyError, TypeError):
        return "?"
