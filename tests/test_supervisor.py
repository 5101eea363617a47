"""Supervisor and BrainActor behaviour, with real pykka actors that really crash."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from brain.actors.base import BrainActor, ChildExited, Link
from brain.actors.supervisor import (
    ChildAlreadyStarted,
    ChildSpec,
    ChildStartError,
    Supervisor,
    total_restarts,
)
from tests.support import wait_until


class Journal:
    """Thread-safe record of lifecycle events, appended from many actor threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[str, str]] = []

    def add(self, kind: str, name: str) -> None:
        with self._lock:
            self._items.append((kind, name))

    def items(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._items)

    def count(self, kind: str, name: str) -> int:
        return self.items().count((kind, name))

    def mark(self) -> int:
        with self._lock:
            return len(self._items)

    def since(self, mark: int) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._items[mark:])


class Countdown:
    """Fails the first ``n`` times it is asked (shared by every generation of a child)."""

    def __init__(self, n: int) -> None:
        self._lock = threading.Lock()
        self.left = n

    def fail_now(self) -> bool:
        with self._lock:
            if self.left > 0:
                self.left -= 1
                return True
            return False


class Worker(BrainActor):
    """Test child: records its lifecycle, crashes on request."""

    def __init__(
        self,
        *,
        link: Link | None = None,
        name: str,
        journal: Journal,
        start_failures: Countdown | None = None,
        tick_s: float | None = None,
        tick_failures_after: int | None = None,
        stop_blocker: threading.Event | None = None,
        stop_raises: bool = False,
    ) -> None:
        super().__init__(link=link)
        self.name = name
        self.journal = journal
        self.start_failures = start_failures
        self.tick_s = tick_s
        self.tick_failures_after = tick_failures_after
        self.ticks = 0
        self.stop_blocker = stop_blocker
        self.stop_raises = stop_raises

    # Deliberately no super() calls in the hooks: the base class must not depend on them.
    def on_start(self) -> None:
        if self.start_failures is not None and self.start_failures.fail_now():
            self.journal.add("start-failed", self.name)
            raise RuntimeError(f"{self.name} cannot start")
        self.journal.add("start", self.name)
        if self.tick_s is not None:
            self.schedule(self.tick_s, "tick")

    def on_stop(self) -> None:
        self.journal.add("stop", self.name)
        if self.stop_blocker is not None:
            self.stop_blocker.wait(10)
        if self.stop_raises:
            raise RuntimeError(f"{self.name} on_stop failed")

    def on_failure(self, *exc_info: Any) -> None:
        self.journal.add("failure", self.name)

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError(f"{self.name} crashed")
        if message == "exit-normally":
            self.stop()
        elif message == "tick":
            self.ticks += 1
            self.journal.add("tick", self.name)
            if self.tick_failures_after is not None and self.ticks > self.tick_failures_after:
                raise RuntimeError(f"{self.name} tick failed")
            self.schedule(self.tick_s or 0.01, "tick")
        return None

    def whoami(self) -> tuple[str, int | None]:
        return self.name, self.link.generation if self.link else None

    def fail_ask(self) -> None:
        raise ValueError("bad request")


def worker(
    name: str, journal: Journal, restart: str = "permanent", shutdown_timeout: float = 5.0, **kw: Any
) -> ChildSpec:
    """ChildSpec for a Worker called ``name``."""
    return ChildSpec(
        name,
        lambda link: Worker.start(link=link, name=name, journal=journal, **kw),
        restart=restart,  # type: ignore[arg-type]
        shutdown_timeout=shutdown_timeout,
    )


def sup_spec(name: str, children: list[ChildSpec], **kw: Any) -> ChildSpec:
    """ChildSpec for a nested Supervisor."""
    return ChildSpec(
        name,
        lambda link: Supervisor.start(link=link, name=name, children=children, **kw),
        shutdown_timeout=10.0,
    )


class Collector(BrainActor):
    """Stands in for a supervisor in base-class tests: records every ChildExited it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[ChildExited] = []

    def on_receive(self, message: Any) -> Any:
        self.got.append(message)

    def received(self) -> list[ChildExited]:
        return list(self.got)


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def started() -> Iterator[Callable[..., pykka.ActorRef[Any]]]:
    """Start actors for a test and stop whatever is still alive afterwards."""
    refs: list[pykka.ActorRef[Any]] = []

    def start(cls: type[pykka.Actor], **kwargs: Any) -> pykka.ActorRef[Any]:
        ref = cls.start(**kwargs)
        refs.append(ref)
        return ref

    yield start
    for ref in reversed(refs):
        try:
            ref.stop(block=True, timeout=5)
        except pykka.Timeout:
            pass


def child_ref(sup: pykka.ActorRef[Any], child_id: str) -> pykka.ActorRef[Any] | None:
    return sup.proxy().get_child(child_id).get(timeout=5)


def restarted(sup: pykka.ActorRef[Any], child_id: str, old: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
    """Wait until the supervisor holds a new, live ref for ``child_id``."""
    return wait_until(
        lambda: (r := child_ref(sup, child_id)) is not None and r != old and r.is_alive() and r
    )


# --- BrainActor exit reporting ---


def run_and_collect(
    started: Callable[..., Any],
    journal: Journal,
    act: Callable[[pykka.ActorRef[Any], Link], None],
    **kw: Any,
) -> list[ChildExited]:
    """Start a Worker linked to a Collector, do ``act`` and return the exits it reported."""
    collector = started(Collector)
    link = Link(collector, "w", 7)
    ref = Worker.start(link=link, name="w", journal=journal, **kw)
    act(ref, link)
    wait_until(lambda: collector.proxy().received().get(timeout=5))
    time.sleep(0.05)  # room for a (wrong) second notification to arrive
    return collector.proxy().received().get(timeout=5)


def test_normal_stop_reports_normal(started, journal):
    got = run_and_collect(started, journal, lambda ref, link: ref.stop())
    assert [(g.child_id, g.generation, g.reason, g.error) for g in got] == [("w", 7, "normal", None)]
    assert journal.count("stop", "w") == 1


def test_tell_crash_reports_error_once_and_runs_on_failure(started, journal):
    got = run_and_collect(started, journal, lambda ref, link: ref.tell("crash"))
    assert [g.reason for g in got] == ["error"]
    assert isinstance(got[0].error, RuntimeError) and "w crashed" in str(got[0].error)
    assert journal.count("failure", "w") == 1 and journal.count("stop", "w") == 0


def test_on_start_failure_reports_error(started, journal):
    got = run_and_collect(started, journal, lambda ref, link: None, start_failures=Countdown(1))
    assert [g.reason for g in got] == ["error"]
    assert "cannot start" in str(got[0].error)


def test_on_stop_failure_reports_error(started, journal):
    got = run_and_collect(started, journal, lambda ref, link: ref.stop(), stop_raises=True)
    assert [g.reason for g in got] == ["error"]


def test_stop_by_supervisor_reports_shutdown(started, journal):
    def act(ref: pykka.ActorRef[Any], link: Link) -> None:
        link.mark_shutdown()
        ref.stop()

    got = run_and_collect(started, journal, act)
    assert [g.reason for g in got] == ["shutdown"]


def test_ask_exception_goes_to_caller_and_actor_lives(started, journal):
    collector = started(Collector)
    ref = started(Worker, link=Link(collector, "w", 1), name="w", journal=journal)
    with pytest.raises(ValueError, match="bad request"):
        ref.proxy().fail_ask().get(timeout=5)
    assert ref.proxy().whoami().get(timeout=5) == ("w", 1)
    assert collector.proxy().received().get(timeout=5) == []


def test_schedule_stops_firing_after_the_actor_stops(started, journal):
    ref = Worker.start(name="t", journal=journal, tick_s=0.01)
    wait_until(lambda: journal.count("tick", "t") >= 3)
    ref.stop(block=True, timeout=5)
    ticks = journal.count("tick", "t")
    time.sleep(0.1)
    assert journal.count("tick", "t") == ticks


def test_many_scheduling_actors_share_one_timer_thread(started, journal):
    refs = [started(Worker, name=f"t{i}", journal=journal, tick_s=0.01) for i in range(50)]
    wait_until(lambda: all(journal.count("tick", f"t{i}") >= 2 for i in range(50)))
    timer_threads = [t for t in threading.enumerate() if t.name == "brain-scheduler"]
    assert len(timer_threads) == 1 and timer_threads[0].daemon
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
    for ref in refs:
        ref.stop(block=False)


def test_actor_threads_are_daemons(started, journal):
    ref = started(Worker, name="d", journal=journal)
    ref.proxy().whoami().get(timeout=5)
    names = {t.name: t.daemon for t in threading.enumerate() if t.name.startswith("Worker-")}
    assert names and all(names.values())


# --- strategies ---


def test_one_for_one_restarts_only_the_crashed_child(started, journal):
    sup = started(Supervisor, name="s", children=[worker(n, journal) for n in "abc"])
    refs = {n: child_ref(sup, n) for n in "abc"}
    _, old_gen = refs["b"].proxy().whoami().get(timeout=5)
    before = total_restarts()
    mark = journal.mark()
    refs["b"].tell("crash")
    new_b = restarted(sup, "b", refs["b"])
    assert child_ref(sup, "a") == refs["a"] and child_ref(sup, "c") == refs["c"]
    assert journal.since(mark) == [("failure", "b"), ("start", "b")]
    assert new_b.proxy().whoami().get(timeout=5)[1] > old_gen
    kids = {k["id"]: k for k in sup.proxy().which_children().get(timeout=5)}
    assert kids["b"]["restarts"] == 1 and kids["a"]["restarts"] == 0
    assert sup.proxy().stats().get(timeout=5)["restarts"] == 1
    assert total_restarts() >= before + 1


def test_rest_for_one_restarts_the_rest_in_order(started, journal):
    sup = started(
        Supervisor, name="s", strategy="rest_for_one", children=[worker(n, journal) for n in "abcd"]
    )
    a = child_ref(sup, "a")
    b = child_ref(sup, "b")
    mark = journal.mark()
    b.tell("crash")
    restarted(sup, "b", b)
    wait_until(lambda: len(journal.since(mark)) >= 6)
    time.sleep(0.05)
    assert journal.since(mark) == [
        ("failure", "b"),
        ("stop", "d"),
        ("stop", "c"),
        ("start", "b"),
        ("start", "c"),
        ("start", "d"),
    ]
    assert child_ref(sup, "a") == a


def test_rest_for_one_drops_temporary_siblings(started, journal):
    sup = started(
        Supervisor,
        name="s",
        strategy="rest_for_one",
        children=[worker("a", journal), worker("t", journal, restart="temporary"), worker("c", journal)],
    )
    a = child_ref(sup, "a")
    a.tell("crash")
    restarted(sup, "a", a)
    wait_until(lambda: journal.count("start", "c") == 2)
    assert [k["id"] for k in sup.proxy().which_children().get(timeout=5)] == ["a", "c"]
    assert journal.count("start", "t") == 1


@pytest.mark.parametrize(
    ("restart", "exit_message", "expect_restart"),
    [
        ("permanent", "exit-normally", True),
        ("permanent", "crash", True),
        ("transient", "exit-normally", False),
        ("transient", "crash", True),
        ("temporary", "exit-normally", False),
        ("temporary", "crash", False),
    ],
)
def test_restart_types(started, journal, restart, exit_message, expect_restart):
    children = [worker("w", journal, restart=restart), worker("x", journal)]
    sup = started(Supervisor, name="s", children=children)
    old = child_ref(sup, "w")
    old.tell(exit_message)
    if expect_restart:
        restarted(sup, "w", old)
        assert sup.proxy().count_children().get(timeout=5) == 2
    else:
        wait_until(lambda: sup.proxy().count_children().get(timeout=5) == 1)
        assert child_ref(sup, "w") is None
        time.sleep(0.05)
        assert journal.count("start", "w") == 1


def test_start_failures_within_intensity_are_retried(started, journal):
    sup = started(
        Supervisor,
        name="s",
        max_restarts=3,
        children=[worker("a", journal), worker("flaky", journal, start_failures=Countdown(2))],
    )
    kids = {k["id"]: k for k in sup.proxy().which_children().get(timeout=5)}
    assert kids["flaky"]["alive"] and kids["flaky"]["restarts"] == 2
    assert journal.items() == [
        ("start", "a"),
        ("start-failed", "flaky"),
        ("start-failed", "flaky"),
        ("start", "flaky"),
    ]


def test_crash_in_periodic_self_tell_restarts_the_child(started, journal):
    sup = started(
        Supervisor, name="s", children=[worker("p", journal, tick_s=0.01, tick_failures_after=2)]
    )
    old = child_ref(sup, "p")
    wait_until(lambda: journal.count("failure", "p") >= 1)
    new = restarted(sup, "p", old)
    assert new.is_alive()
    # The restarted actor ticks again from its own on_start: periodic work survives restarts.
    wait_until(lambda: journal.count("tick", "p") >= 4)


def test_stale_generation_notifications_are_ignored(started, journal):
    sup = started(Supervisor, name="s", children=[worker("w", journal)])
    old = child_ref(sup, "w")
    _, old_gen = old.proxy().whoami().get(timeout=5)
    old.tell("crash")
    new = restarted(sup, "w", old)
    _, new_gen = new.proxy().whoami().get(timeout=5)
    assert new_gen != old_gen
    # A late duplicate from the dead generation must not restart the live one.
    sup.tell(ChildExited("w", old_gen, "error", RuntimeError("late")))
    sup.tell(ChildExited("nobody", 999, "error", None))
    assert sup.proxy().stats().get(timeout=5)["restarts"] == 1
    assert child_ref(sup, "w") == new and new.is_alive()


# --- escalation ---


def test_intensity_exceeded_escalates_to_the_parent(started, journal, caplog):
    caplog.set_level(logging.WARNING, logger="brain.supervisor")
    inner = sup_spec("inner", [worker("w", journal)], max_restarts=1, max_seconds=5)
    root = started(Supervisor, name="root", children=[worker("a", journal), inner], max_restarts=3)
    inner_ref = child_ref(root, "inner")
    a = child_ref(root, "a")
    w1 = child_ref(inner_ref, "w")
    w1.tell("crash")
    w2 = restarted(inner_ref, "w", w1)
    mark = journal.mark()
    w2.tell("crash")  # second restart within 5 s > max_restarts=1: inner gives up
    new_inner = restarted(root, "inner", inner_ref)
    assert not inner_ref.is_alive()
    w3 = wait_until(lambda: child_ref(new_inner, "w"))
    assert w3.is_alive() and not w2.is_alive()
    assert child_ref(root, "a") == a  # one_for_one at the root: the sibling is untouched
    assert ("start", "w") in journal.since(mark)
    stats = root.proxy().stats().get(timeout=5)
    assert stats["escalations"] == 1
    assert stats["restarts"] == 2  # inner's restart of w, then root's restart of inner
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "brain.supervisor"]
    assert len(errors) == 1 and "inner" in errors[0].getMessage()
    assert any(r.levelno == logging.WARNING and "'w'" in r.getMessage() for r in caplog.records)


def test_root_gives_up_once_and_stops_everything(started, journal):
    gave_up: list[str] = []
    root = started(
        Supervisor,
        name="root",
        max_restarts=2,
        max_seconds=5,
        on_give_up=gave_up.append,
        children=[worker("a", journal), sup_spec("inner", [worker("b", journal)]), worker("c", journal)],
    )
    inner = child_ref(root, "inner")
    everyone = [child_ref(root, "a"), inner, child_ref(inner, "b")]
    for _ in range(2):
        c = child_ref(root, "c")
        c.tell("crash")
        restarted(root, "c", c)
    child_ref(root, "c").tell("crash")  # third restart within 5 s > max_restarts=2
    wait_until(lambda: not root.is_alive())
    wait_until(lambda: all(not r.is_alive() for r in everyone))
    assert len(gave_up) == 1 and "root" in gave_up[0]
    assert journal.count("stop", "a") == 1 and journal.count("stop", "b") == 1
    ours = (Worker, Supervisor)
    wait_until(lambda: not [r for r in pykka.ActorRegistry.get_all() if r.actor_class in ours])


def test_root_that_cannot_start_a_child_gives_up(started, journal):
    gave_up: list[str] = []
    root = started(
        Supervisor,
        name="root",
        max_restarts=1,
        on_give_up=gave_up.append,
        children=[worker("a", journal), worker("never", journal, start_failures=Countdown(100))],
    )
    wait_until(lambda: not root.is_alive())
    assert len(gave_up) == 1 and "never" in gave_up[0]
    assert journal.items() == [
        ("start", "a"),
        ("start-failed", "never"),
        ("start-failed", "never"),
        ("stop", "a"),
    ]


# --- ordered start and stop ---


def test_tree_starts_in_order_and_stops_in_reverse(started, journal):
    root = started(
        Supervisor,
        name="root",
        children=[
            worker("a", journal),
            sup_spec("inner", [worker("b", journal), worker("c", journal)], strategy="rest_for_one"),
            worker("d", journal),
        ],
    )
    root.proxy().stats().get(timeout=5)  # an ask is answered only after on_start has finished
    assert journal.items() == [("start", n) for n in "abcd"]
    assert root.stop(block=True, timeout=10)
    assert journal.items()[4:] == [("stop", n) for n in "dcba"]


def test_stop_completes_when_a_child_ignores_stop(started, journal):
    blocker = threading.Event()
    try:
        root = started(
            Supervisor,
            name="root",
            children=[
                worker("a", journal),
                ChildSpec(
                    "hung",
                    lambda link: Worker.start(link=link, name="hung", journal=journal, stop_blocker=blocker),
                    shutdown_timeout=0.2,
                ),
                worker("c", journal),
            ],
        )
        t0 = time.monotonic()
        assert root.stop(block=True, timeout=5)
        assert time.monotonic() - t0 < 2
        assert journal.items()[3:] == [("stop", "c"), ("stop", "hung"), ("stop", "a")]
    finally:
        blocker.set()


class Rendezvous(BrainActor):
    """Test child whose on_stop returns only once every sibling is stopping at the same time."""

    def __init__(self, *, link: Link | None = None, name: str, journal: Journal, barrier: threading.Barrier) -> None:
        super().__init__(link=link)
        self.name = name
        self.journal = journal
        self.barrier = barrier

    def on_stop(self) -> None:
        try:
            self.barrier.wait(timeout=5)
            self.journal.add("met", self.name)
        except threading.BrokenBarrierError:
            self.journal.add("alone", self.name)


def test_stop_together_stops_every_child_at_once(started, journal):
    names = ["u1", "u2", "u3", "u4"]
    barrier = threading.Barrier(len(names))
    sup = started(Supervisor, name="stores", stop_together=True)
    for name in names:
        start = lambda link, name=name: Rendezvous.start(link=link, name=name, journal=journal, barrier=barrier)  # noqa: E731
        sup.proxy().start_child(ChildSpec(name, start)).get(timeout=5)
    assert sup.stop(block=True, timeout=10)
    # One after another, the first child would wait at the barrier alone until it broke.
    assert sorted(journal.items()) == [("met", n) for n in names]


def test_stop_together_still_abandons_a_hung_child_after_its_timeout(started, journal):
    blocker = threading.Event()
    try:
        sup = started(Supervisor, name="stores", stop_together=True)
        hung = ChildSpec(
            "hung",
            lambda link: Worker.start(link=link, name="hung", journal=journal, stop_blocker=blocker),
            shutdown_timeout=0.2,
        )
        for spec in (worker("a", journal), hung, worker("c", journal)):
            sup.proxy().start_child(spec).get(timeout=5)
        t0 = time.monotonic()
        assert sup.stop(block=True, timeout=5)
        assert time.monotonic() - t0 < 2
        assert sorted(journal.items()[3:]) == [("stop", "a"), ("stop", "c"), ("stop", "hung")]
    finally:
        blocker.set()


# --- dynamic children ---


def test_dynamic_children(started, journal):
    sup = started(Supervisor, name="stores", children=[worker("static", journal)])
    proxy = sup.proxy()
    u1 = proxy.start_child(worker("u1", journal, restart="transient")).get(timeout=5)
    u2 = proxy.start_child(worker("u2", journal)).get(timeout=5)
    assert proxy.get_child("u1").get(timeout=5) == u1
    assert proxy.count_children().get(timeout=5) == 3
    assert [(k["id"], k["dynamic"], k["restart"]) for k in proxy.which_children().get(timeout=5)] == [
        ("static", False, "permanent"),
        ("u1", True, "transient"),
        ("u2", True, "permanent"),
    ]
    with pytest.raises(ChildAlreadyStarted) as dup:
        proxy.start_child(worker("u1", journal)).get(timeout=5)
    assert dup.value.ref == u1

    proxy.terminate_child("u2").get(timeout=5)
    assert not u2.is_alive() and proxy.get_child("u2").get(timeout=5) is None
    assert journal.count("start", "u2") == 1  # terminated children are not restarted
    proxy.terminate_child("no-such-child").get(timeout=5)

    u1.tell("crash")  # a crashed transient dynamic child is restarted on its own
    new_u1 = restarted(sup, "u1", u1)
    assert journal.count("stop", "static") == 0
    new_u1.tell("exit-normally")  # an idle store stopping itself is simply forgotten
    wait_until(lambda: proxy.count_children().get(timeout=5) == 1)


def test_dynamic_child_that_fails_to_start_is_the_callers_error(started, journal):
    sup = started(Supervisor, name="s")
    with pytest.raises(ChildStartError, match="cannot start"):
        sup.proxy().start_child(worker("bad", journal, start_failures=Countdown(1))).get(timeout=5)
    not_linked = ChildSpec("plain", lambda link: Worker.start(name="plain", journal=journal))
    with pytest.raises(ChildStartError, match="did not pass the Link"):
        sup.proxy().start_child(not_linked).get(timeout=5)
    assert sup.proxy().count_children().get(timeout=5) == 0
    assert sup.is_alive() and sup.proxy().stats().get(timeout=5)["restarts"] == 0


def test_rest_for_one_restarts_dynamic_children_appended_at_the_end(started, journal):
    sup = started(Supervisor, name="data", strategy="rest_for_one", children=[worker("bus", journal)])
    dyn = sup.proxy().start_child(worker("u1", journal)).get(timeout=5)
    bus = child_ref(sup, "bus")
    bus.tell("crash")
    restarted(sup, "bus", bus)
    restarted(sup, "u1", dyn)
    mark = journal.mark()
    new_dyn = child_ref(sup, "u1")
    new_dyn.tell("crash")  # a dynamic child's own crash restarts only itself
    restarted(sup, "u1", new_dyn)
    assert ("stop", "bus") not in journal.since(mark)
