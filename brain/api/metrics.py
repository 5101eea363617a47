"""The API role's Prometheus figures: health, JWKS cache, token cache, stores, search index, event bus,
and on a cluster node the node's own (each node is scraped on its own).

Read at scrape time from what each part counts anyway (registered through `register_metrics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import Metric

from brain.api.cluster import cluster_node
from brain.api.state import doorbell, jwks_state, store_manager, token_verifier
from brain.health import HEALTH
from brain.metrics import counter, gauge
from brain.process import Process

__all__ = ["sources"]


def sources(rt: Process) -> list[tuple[str, Callable[[], Iterable[Metric]]]]:
    """(name, collect) for each group of figures."""

    def healthy() -> list[Metric]:
        problems = rt.stash[HEALTH].problems()
        return [gauge("brain_healthy", "1 when /health says ok (signing keys loaded, NATS connected), else 0.",
                      0 if problems else 1)]

    def jwks() -> list[Metric]:
        state = jwks_state(rt)
        snap = state.snapshot
        out = [
            gauge("brain_jwks_keys", "Usable keys in the API role's cached JWKS (0: none loaded).",
                  0 if snap is None else len(snap.keys)),
            counter("brain_jwks_refreshes", "Successful JWKS fetches.", state.fetches),
            counter("brain_jwks_refresh_failures", "Failed JWKS fetches (the last good keys are kept).", state.failures),
            gauge("brain_jwks_consecutive_failures", "Failed JWKS fetches since the last success.",
                  state.consecutive_failures),
            counter("brain_jwks_unknown_kid_refetches", "Refetches asked for by tokens with an unknown kid.",
                    state.refetches),
        ]
        if snap is not None:
            out.append(gauge("brain_jwks_age_seconds", "Age of the cached JWKS (grows while refreshes fail).",
                             time.time() - snap.fetched_at))
            out.append(gauge("brain_jwks_max_staleness_seconds", "Age at which the cached keys are dropped (503).",
                             state.max_staleness))
        return out

    def token_cache() -> list[Metric]:
        stats = token_verifier(rt).stats()
        return [
            counter("brain_jwt_cache_hits", "Bearer tokens found verified in the token cache.", stats["hits"]),
            counter("brain_jwt_cache_misses", "Bearer tokens that needed a full check.", stats["misses"]),
            gauge("brain_jwt_cache_entries", "Tokens in the token cache.", stats["size"]),
        ]

    def stores() -> list[Metric]:
        stats = store_manager(rt).stats()
        return [
            gauge("brain_stores_open", "User stores open now (one SQLite file and actor each).", stats["open"]),
            gauge("brain_stores_max_open", "Open user stores allowed before the least recently used closes.",
                  stats["max_open"]),
            counter("brain_store_activations", "User stores opened.", stats["activations"]),
            counter("brain_store_evictions", "User stores closed to stay under max_open.", stats["evictions"]),
            gauge("brain_stores_quarantined", "User stores found damaged and waiting for repair.",
                  len(stats["quarantined"])),
        ]

    def search() -> list[Metric]:
        stats = store_manager(rt).search_stats()
        return [
            gauge("brain_search_index_enabled", "1 when events are indexed for search (search.index).",
                  1 if stats["index"] else 0),
            gauge("brain_search_backfill_stores", "Open stores whose existing events are still being indexed.",
                  stats["backfilling_stores"]),
            gauge("brain_search_backfill_pending_events", "Events those stores have still to index.",
                  stats["backfill_pending_events"]),
            counter("brain_search_backfilled_events", "Existing events indexed by backfills in this process.",
                    stats["backfilled_events"]),
            counter("brain_search_backfilled_stores", "Stores whose backfill completed in this process.",
                    stats["backfilled_stores"]),
        ]

    def event_bus() -> list[Metric]:
        bell = doorbell(rt)
        stats = bell.stats()
        out = [gauge("brain_nats_connected", "1 while the event bus is connected to NATS JetStream.",
                     1 if stats.get("connected") else 0)]
        if "published" not in stats:  # the bus is (re)starting: no publisher figures
            return out
        out += [
            counter("brain_events_published", "Events JetStream acknowledged as new.", stats["published"]),
            counter("brain_events_publish_duplicates", "Re-sent events JetStream dropped as duplicates.",
                    stats["duplicates"]),
            counter("brain_events_publish_failures", "Publishes that failed or timed out (retried from the outbox).",
                    stats["failures"]),
            counter("brain_events_drained", "Events published from the outboxes on disk (after an outage).",
                    stats["drained"]),
            gauge("brain_outbox_queued_events", "Committed events waiting in memory to be published.", stats["queued"]),
            gauge("brain_outbox_in_flight_events", "Events published and awaiting JetStream's acknowledgement.",
                  stats["in_flight"]),
            gauge("brain_outbox_dirty_users", "Users whose unpublished events wait in their outbox on disk.",
                  stats["dirty_users"]),
            gauge("brain_outbox_oldest_unacked_seconds",
                  "Age of the oldest publish still awaiting its JetStream acknowledgement (0: none).",
                  bell.oldest_unacked_seconds()),
        ]
        return out

    def cluster() -> list[Metric]:
        node = cluster_node(rt)
        if node is None:
            return []
        stats = node.stats()
        return [
            gauge("brain_cluster_serving", "1 once this node has loaded the placement map and answers forwards.",
                  1 if stats["ready"] else 0),
            gauge("brain_cluster_heartbeat", "1 while this process holds the node's heartbeat (its primary worker).",
                  1 if stats["heartbeat"] else 0),
            gauge("brain_cluster_users", "Users placed on this node (as its placement map says).",
                  stats["users_per_node"].get(stats["node"], 0)),
            counter("brain_cluster_forwarded", "Requests sent to the node holding their user.", stats["forwarded"]),
            counter("brain_cluster_forwarded_direct", "Of those, sent straight to the NATS server that node answers from.",
                    stats["forwarded_direct"]),
            counter("brain_cluster_served_for_others", "Requests other nodes forwarded here.",
                    stats["served_for_others"]),
            counter("brain_cluster_resent", "Forwards sent on to the node their user had just moved to.",
                    stats["resent"]),
            counter("brain_cluster_taken_over", "Users this node took over from dead nodes.", stats.get("taken_over", 0)),
            counter("brain_cluster_given_up", "Stores this node gave up to the users' new nodes.",
                    stats.get("given_up", 0)),
            counter("brain_cluster_drained", "Users this node handed to others by a drain.", stats.get("drained", 0)),
            gauge("brain_cluster_rebuilding", "User stores being rebuilt from the event stream here.",
                  stats.get("rebuilding", 0)),
        ]

    return [("health", healthy), ("jwks", jwks), ("token_cache", token_cache), ("stores", stores),
            ("search", search), ("event_bus", event_bus), ("cluster", cluster)]
