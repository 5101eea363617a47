"""The conversion pool: pages converted in worker processes give exactly what converting in
place gives, and no worker outlives the process that started it, even after a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

from brain.mail.conversion import MIN_POOLED, WORKER_NICE, ConversionPool
from brain.mail.provider import ConvertOptions, MessageContext, convert_inline, message_from_mime
from tests.support import REPO, wait_until

CORPUS = sorted((Path(__file__).parent / "mail_corpus").glob("*.eml"))


def test_a_pooled_page_is_converted_exactly_as_in_place() -> None:
    raws = [path.read_bytes() for path in CORPUS]
    contexts = [MessageContext(message_id=path.stem, own_addresses=("me@example.com",)) for path in CORPUS]
    convert = partial(message_from_mime, options=ConvertOptions(max_text_bytes=4096))
    pool = ConversionPool(2)
    try:
        assert len(raws) >= MIN_POOLED
        assert pool.map(convert, raws, contexts) == convert_inline(convert, raws, contexts)
        assert pool._executor is not None  # it really went to the workers
        small = ConversionPool(2)
        assert small.map(convert, raws[:2], contexts[:2]) == convert_inline(convert, raws[:2], contexts[:2])
        assert small._executor is None  # too few to be worth the hop
    finally:
        pool.close()


def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from functools import partial
        from brain.mail.conversion import ConversionPool
        from brain.mail.provider import MessageContext, message_from_mime
        pool = ConversionPool(2)
        raw = b"Subject: x\\n\\nhello\\n"
        pool.map(message_from_mime, [raw] * 16, [MessageContext(message_id=str(i)) for i in range(16)])
        print(" ".join(str(p) for p in pool._executor._processes), flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        workers = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=15, what="the workers to exit")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Unloadable:
    """Pickles, but a worker cannot load it (as IMAPClient's dates once could not)."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_refuse, ())


def _refuse() -> None:
    raise TypeError("cannot be loaded in a worker")


def _kind(value: object) -> str:
    return type(value).__name__


def test_a_page_the_workers_cannot_take_is_converted_in_place_and_the_pool_recovers() -> None:
    pool = ConversionPool(2)
    try:
        assert pool.map(_kind, [Unloadable()] * MIN_POOLED) == ["Unloadable"] * MIN_POOLED
        assert pool.map(_kind, list(range(MIN_POOLED))) == ["int"] * MIN_POOLED  # fresh workers
        assert pool._executor is not None
    finally:
        pool.close()


def test_by_default_one_worker_per_usable_core_and_none_on_a_single_core() -> None:
    """`convert_workers = -1` follows the process's CPU affinity: every core it may use, but no
    worker at all when it may use only one (there a worker could only take turns with the server)."""
    cores = sorted(os.sched_getaffinity(0))
    assert len(cores) >= 2, f"this test needs a machine with two cores or more, got {cores}"

    def default_workers(affinity: list[int]) -> int:
        code = ("import os; from brain.mail.conversion import ConversionPool; "
                f"os.sched_setaffinity(0, {set(affinity)!r}); print(ConversionPool(-1).workers)")
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    assert default_workers(cores) == len(cores)
    assert default_workers(cores[:1]) == 0


def test_workers_run_niced_so_the_servers_own_threads_win_the_cpu() -> None:
    """A worker converts the page after the one being stored: it gives way (nice WORKER_NICE)
    to the store's thread and the event loop, which the sync waits on now."""
    pool = ConversionPool(1)
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        seen = pool.map(partial(os.getpriority, os.PRIO_PROCESS), [0] * MIN_POOLED)
    finally:
        pool.close()
    assert seen == [min(19, own + WORKER_NICE)] * MIN_POOLED
    assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the server itself is not niced
