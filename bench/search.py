"""`python -m bench.search [--quick]`: search over a store of 100,000 events (issue 16).

The store: 90 % notes (title, two to five sentences, tags: ~0.5 KiB) and 10 % mail events in
the mail message model (`mail.message.received`: addresses, subject, labels, a ~9.5 KiB
body_text and its ~7.5 KiB clean copy, snippet, attachments: ~20 KiB of JSON each), words drawn
from a 50,000-word vocabulary with Zipf frequencies, created_at spread over two years. It is
written as brain wrote stores before the index (schema 2, tests/search_support.py), so the
first request to it upgrades it and starts the backfill, which is timed:

- `search.backfill`: events indexed per second, from the request that opens the store until
  GET /me/stats says the index is ready (the server goes on answering meanwhile).
- `search.latency`: GET /search from one client (keep-alive, one request at a time), over a
  fixed mix of 200 queries cycled: 40 % one content word (vocabulary ranks 100-20,000), 20 %
  two content words, 10 % a two-word phrase taken from the corpus, 10 % a prefix (3-4
  letters + *), 10 % field filters (from:<name>, subject:<word>, type:mail.* <word>), 10 % a
  common word (ranks 10-100, found in 10-40 % of events). Default page (10 results, with
  highlights). GET /events?limit=10 of the same user is sent in alternating blocks: its p50 is
  the same-run reference.
- `search.post_ab`: POST /events (one small note) from one client to two servers holding the
  same store, one indexing (`search.index = true`) and one not (`false`), in alternating
  blocks of 50: the difference of their p50s is what the index costs a write.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import KeepAliveClient, Shadow, expect, sample_latencies
from bench.report import Figure, Target, latency_figure, percentile, render_table, summary_lines
from bench.servers import FAST_ARGON2, bench_config, start_brain
from bench.users import User, run_tag, sign_up
from tests.search_support import write_v2_store
from tests.support import BrainServer

KEYS = ("search.backfill", "search.latency", "search.post_ab")
CATALOGUE: list[tuple[str, str, str]] = [
    ("search.backfill", "search: backfill of an existing {events}-event store", "events/s"),
    ("search.latency", "GET /search, 1 client, {events}-event store", "ms"),
    ("search.post_ab", "POST /events, 1 client, indexed vs not ({events}-event store)", "ms"),
]
TARGETS = [
    Target("search.backfill", ">=", 5000.0, text=">= 5,000 events/s"),
    Target("search.latency", "<=", 5.0, text="p50 <= 5 ms"),
    Target("search.latency", "<=", 25.0, field="p99", text="p99 <= 25 ms"),
    Target("search.post_ab", "<=", 0.15, field="p50 cost of the index ms",
           text="p50 no more than 0.15 ms above the same store without the index"),
]
MAIL_FRACTION = 0.10
VOCABULARY = 50_000
SENTENCES = 20_000
BLOCK = 50
_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ei")]


@dataclass(frozen=True)
class SearchBench:
    """Figures of one run of this module."""

    backfill_rate: float
    backfill_seconds: float
    events: int
    search: list[float]
    reference: list[float]
    post_indexed: list[float]
    post_plain: list[float]
    queries: int


class Corpus:
    """The deterministic corpus: vocabulary, sentences, people, and events made of them."""

    def __init__(self, seed: int = 16) -> None:
        rng = self.rng = random.Random(seed)
        words: list[str] = []
        seen: set[str] = set()
        while len(words) < VOCABULARY:
            word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))
            if word not in seen:
                seen.add(word)
                words.append(word)
        self.words = words
        weights = [1.0 / (rank + 2.7) for rank in range(VOCABULARY)]
        cumulative = []
        total = 0.0
        for w in weights:
            total += w
            cumulative.append(total)
        self._cumulative = cumulative
        self.sentences = [self._sentence(rng.randint(6, 18)) for _ in range(SENTENCES)]
        first = [w.capitalize() for w in words[5000:5300]]
        last = [w.capitalize() for w in words[6000:6300]]
        self.people = [(f"{rng.choice(first)} {rng.choice(last)}", f"{f.lower()}.{l.lower()}@{rng.choice(words[7000:7050])}.example")
                       for f, l in ((rng.choice(first), rng.choice(last)) for _ in range(2000))]

    def _sentence(self, n: int) -> str:
        picked = self.rng.choices(self.words, cum_weights=self._cumulative, k=n)
        return " ".join(picked).capitalize() + "."

    def text(self, sentences: int) -> str:
        """Sentences from the pool, joined."""
        return " ".join(self.rng.choice(self.sentences) for _ in range(sentences))

    def events(self, count: int) -> Iterator[tuple[str, str, str]]:
        """(type, data JSON, created_at) rows, oldest first by id, created over two years."""
        rng = self.rng
        start = time.time() - 2 * 365 * 86400
        for i in range(count):
            moment = start + (i / count) * 2 * 365 * 86400
            if rng.random() < MAIL_FRACTION:
                # Mail arrives late: dated up to a month before it was synced.
                moment -= rng.uniform(0, 30 * 86400)
                yield "mail.message.received", json.dumps(self.mail(i, moment)), _stamp(moment)
            else:
                note = {"title": self._sentence(rng.randint(3, 6))[:-1], "text": self.text(rng.randint(2, 5)),
                        "tags": rng.sample(self.words[100:2000], 2)}
                yield "note.created", json.dumps(note), _stamp(moment)

    def mail(self, i: int, moment: float) -> dict[str, Any]:
        """One `mail.message.received` payload of ~20 KiB, in the mail message model."""
        rng = self.rng
        sender = rng.choice(self.people)
        recipients = rng.sample(self.people, rng.randint(1, 3))
        body = ""
        while len(body) < 9700:
            body += self.text(3) + "\n\n"
        clean = body[: int(len(body) * 0.78)]
        attachments = [
            {"id": f"att{i}-{n}", "filename": f"{rng.choice(self.words[200:3000])}.pdf", "mime_type": "application/pdf",
             "size": rng.randint(10_000, 900_000), "content_id": None, "inline": False}
            for n in range(rng.choice((0, 0, 0, 1, 2)))
        ]
        return {
            "account": "acc_bench", "provider": "gmail", "address": "me@bench.example",
            "message_id": f"m{i:08d}", "thread_id": f"t{i // 3:08d}", "internet_message_id": f"<m{i}@bench.example>",
            "in_reply_to": None, "references": [],
            "from": {"name": sender[0], "address": sender[1]},
            "to": [{"name": n, "address": a} for n, a in recipients], "cc": [], "bcc": [], "reply_to": [],
            "subject": self._sentence(rng.randint(4, 9))[:-1], "date": _stamp(moment), "direction": "received",
            "folders": [], "labels": rng.sample(["INBOX", "IMPORTANT", "Work", "Family", "Receipts"], rng.randint(1, 2)),
            "flags": {"read": True, "starred": False, "important": False}, "size": len(body) * 2,
            "snippet": " ".join(clean[:200].split()), "body_text": body, "body_text_clean": clean,
            "attachments": attachments, "has_attachments": bool(attachments), "truncated": False,
        }

    def queries(self, count: int = 200) -> list[str]:
        """The query mix (see the module docstring), deterministic."""
        rng = random.Random(61)
        content = self.words[100:20_000]
        common = self.words[10:100]
        out: list[str] = []
        for i in range(count):
            kind = i % 10
            if kind < 4:
                out.append(rng.choice(content))
            elif kind < 6:
                out.append(f"{rng.choice(content)} {rng.choice(content)}")
            elif kind == 6:
                words = rng.choice(self.sentences).rstrip(".").lower().split()
                at = rng.randrange(len(words) - 1)
                out.append(f'"{words[at]} {words[at + 1]}"')
            elif kind == 7:
                word = rng.choice([w for w in content[:3000] if len(w) >= 5])
                out.append(word[: rng.choice((3, 4))] + "*")
            elif kind == 8:
                name, _ = rng.choice(self.people)
                out.append(rng.choice((f"from:{name.split()[0].lower()}", f"subject:{rng.choice(content)}",
                                       f"type:mail.* {rng.choice(content)}")))
            else:
                out.append(rng.choice(common))
        return out


def _stamp(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1e6):06d}Z"


def _search_path(q: str) -> str:
    return "/search?" + urllib.parse.urlencode({"q": q})


def measure(workdir: Path, *, events: int, samples: int, post_samples: int, progress: Callable[[str], None],
            overrides: dict[str, dict[str, Any]] | None = None) -> SearchBench:
    """Build the store, start the two servers, take the three measurements (`overrides`: `--set`)."""
    corpus = Corpus()
    tag = run_tag()
    extra: dict[str, dict[str, Any]] = {"api": {"max_events_per_minute": 0, "max_user_bytes": 0}}
    for section, values in (overrides or {}).items():
        extra.setdefault(section, {}).update(values)
    config = bench_config(argon2=FAST_ARGON2, extra=extra)
    indexed = start_brain(workdir / "indexed", config=config)
    plain: BrainServer | None = None
    try:
        plain = start_brain(workdir / "plain", config={**config, "search": {**config.get("search", {}), "index": False}})
        with KeepAliveClient(indexed.auth_port) as c:
            user, _ = sign_up(c, tag, 0)
        with KeepAliveClient(plain.auth_port) as c:
            other, _ = sign_up(c, tag, 1)
        progress(f"search: writing a schema-2 store of {events} events ({MAIL_FRACTION:.0%} mail)")
        source = write_v2_store(workdir / "corpus", "corpus", corpus.events(events))
        for server, owner in ((indexed, user), (plain, other)):
            target = server.data_dir / "users" / owner.id / "events.db"
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        progress("search: backfilling the index")
        rate, seconds = _backfill(indexed, user, events)
        progress(f"search: backfill {rate:.0f} events/s; GET /search x{samples}")
        search, reference = _search_latency(indexed, user, corpus.queries(), samples)
        progress(f"search: POST /events x{post_samples}, indexed and not, alternating")
        post_indexed, post_plain = _post_ab(indexed, user, plain, other, post_samples)
        return SearchBench(rate, seconds, events, search, reference, post_indexed, post_plain, 200)
    finally:
        indexed.close()
        if plain is not None:
            plain.close()


def _stats(c: KeepAliveClient, user: User) -> dict[str, Any]:
    body: dict[str, Any] = expect(c.request("GET", "/me/stats", headers={"Authorization": user.authorization}), 200,
                                  what="GET /me/stats").json()
    return body


def _backfill(server: BrainServer, user: User, events: int) -> tuple[float, float]:
    """(events/s, seconds) from the request that opens the store until the index is ready."""
    with KeepAliveClient(server.api_port, timeout=120) as c:
        started = time.monotonic()
        stats = _stats(c, user)
        if stats["events"] != events:
            raise RuntimeError(f"the store holds {stats['events']} events, not {events}")
        while stats["index"]["state"] != "ready":
            if time.monotonic() - started > 1800:
                raise RuntimeError(f"backfill not done after 30 min: {stats['index']}")
            time.sleep(0.5)
            stats = _stats(c, user)
        seconds = time.monotonic() - started
        if stats["index"]["documents"] != events:
            raise RuntimeError(f"{stats['index']['documents']} documents indexed for {events} events")
    return events / seconds, seconds


def _search_latency(server: BrainServer, user: User, queries: list[str], samples: int) -> tuple[list[float], list[float]]:
    headers = {"Authorization": user.authorization}
    with KeepAliveClient(server.api_port) as c, KeepAliveClient(server.api_port) as ref:
        raws = [c.encode("GET", _search_path(q), headers=headers) for q in queries]
        shadow = Shadow(ref, ref.encode("GET", "/events?limit=10", headers=headers), 200, [])
        times = sample_latencies(c, lambda i: raws[i % len(raws)], count=samples, warmup=len(raws), statuses=(200,),
                                 what="GET /search", shadow=shadow)
    return times, shadow.times


def _post_ab(a: BrainServer, user_a: User, b: BrainServer, user_b: User, samples: int) -> tuple[list[float], list[float]]:
    body = {"type": "note.created", "data": {"title": "Bench note", "text": "a small note about the lease renewal"}}
    out: dict[str, list[float]] = {"a": [], "b": []}
    with KeepAliveClient(a.api_port) as ca, KeepAliveClient(b.api_port) as cb:
        sides = {
            "a": (ca, ca.encode("POST", "/events", headers={"Authorization": user_a.authorization}, body=body)),
            "b": (cb, cb.encode("POST", "/events", headers={"Authorization": user_b.authorization}, body=body)),
        }
        for side, (client, raw) in sides.items():  # warm both: stores open, caches warm
            for _ in range(BLOCK):
                expect(client.send(raw), 201, what=f"POST /events ({side})")
        for block in range(samples // BLOCK):
            order = ("a", "b") if block % 2 == 0 else ("b", "a")
            for side in order:
                client, raw = sides[side]
                for _ in range(BLOCK):
                    out[side].append(expect(client.send(raw), 201, what=f"POST /events ({side})").elapsed)
    return out["a"], out["b"]


def figures(result: SearchBench, labels: dict[str, tuple[str, str]]) -> list[Figure]:
    """The three figures of a run."""
    label, unit = labels["search.backfill"]
    backfill = Figure(key="search.backfill", label=label, unit=unit, value=result.backfill_rate, samples=1)
    backfill.extra["seconds"] = round(result.backfill_seconds, 1)
    backfill.note = f"{result.events} events, {MAIL_FRACTION:.0%} of them ~20 KiB mails; wall time, store opened by the first request"
    label, unit = labels["search.latency"]
    latency = latency_figure("search.latency", label, result.search, unit=unit)
    latency.baseline = percentile([t * 1000 for t in result.reference], 50)
    latency.baseline_label = "GET /events?limit=10, same user, alternating blocks"
    latency.note = f"{result.queries} queries cycled (mix in bench/search.py), 10 results with highlights"
    label, unit = labels["search.post_ab"]
    post = latency_figure("search.post_ab", label, result.post_indexed, unit=unit)
    plain_p50 = percentile([t * 1000 for t in result.post_plain], 50)
    post.baseline = plain_p50
    post.baseline_label = "the same store on a server with search.index = false, alternating blocks of 50"
    post.extra["p50 cost of the index ms"] = round(post.value - plain_p50, 4) if post.value is not None else None
    post.extra["p99 indexed / plain ms"] = f"{post.p99:.3f} / {percentile([t * 1000 for t in result.post_plain], 99):.3f}"
    return [backfill, latency, post]


def labels_for(events: int) -> dict[str, tuple[str, str]]:
    """Catalogue labels with the store size filled in."""
    return {key: (label.format(events=f"{events:,}"), unit) for key, label, unit in CATALOGUE}


def main(argv: list[str] | None = None) -> int:
    """Run alone: `python -m bench.search [--quick] [--events N]`."""
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 events, fewer samples")
    parser.add_argument("--events", type=int, help="store size (default 100,000; 10,000 with --quick)")
    args = parser.parse_args(argv)
    events = args.events or (10_000 if args.quick else 100_000)
    samples, post_samples = (300, 300) if args.quick else (2000, 2000)
    workdir = Path(tempfile.mkdtemp(prefix="brain-bench-search-"))
    try:
        result = measure(workdir, events=events, samples=samples, post_samples=post_samples,
                         progress=lambda m: print(f"[bench] {m}", flush=True))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figs = figures(result, labels_for(events))
    print(render_table(figs, TARGETS))
    print("\n".join(summary_lines({f.key: f for f in figs}, TARGETS)))
    print(f"POST p50 indexed {statistics.median(result.post_indexed) * 1000:.3f} ms, "
          f"plain {statistics.median(result.post_plain) * 1000:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
