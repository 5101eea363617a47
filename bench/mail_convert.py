"""`python -m bench.mail_convert`: raw MIME -> message model, on one core.

Issue 15 asks the conversion alone to reach 2,000 messages a second on one core for mail
averaging 20 KiB of HTML. The messages here are HTML-only (the costly case: every body goes
through HTML -> text and the clean-text pass), in three shapes drawn at random: a table-laid
newsletter in quoted-printable, a notification in base64, and a Gmail-style reply with its
quoted history. The process is pinned to one CPU while it measures. Beside every timed pass
of `brain.mail.convert.message_from_mime` run, under the same load:

- the baseline: the stdlib parse and transfer decoding of the same bytes, what reading them
  with the `email` package costs before any conversion;
- the HTML -> text step alone (`brain.mail.mailtext.html_to_text`, the maintained converter)
  on the decoded bodies of the same messages: the conversion cannot run faster than this.

The machine is shared, so each rate is also taken in process CPU time: the time the one core
spent on this work, without the time other processes held it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import quopri
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from email.parser import BytesParser
from email.policy import compat32

from bench.report import Figure, Target, rate_figure, render_table, summary_lines
from brain.mail.convert import message_from_mime
from brain.mail.mailtext import decode_bytes, html_to_text
from brain.mail.message import MessageContext

HTML_BYTES = 20 * 1024
KEY = "mail.convert"
LABEL = "mail conversion: raw MIME -> model, 20 KiB HTML-only, one core"
TARGET = Target(KEY, ">=", 2000.0, text=">= 2,000 msg/s")

_parser = BytesParser(policy=compat32)
_WORDS = (
    "the meeting notes attached please review budget draft schedule tomorrow thanks project launch "
    "report quarter revenue customer order shipped invoice travel plans weekend photos team update "
    "release feature design review deadline contract proposal agenda summary question answer"
).split()


@dataclass(frozen=True)
class ConvertRun:
    """Messages per second of each repeat: the conversion, the stdlib parse and HTML -> text alone."""

    convert: list[float]
    floor: list[float]
    html_to_text: list[float]
    convert_cpu: list[float]
    html_to_text_cpu: list[float]
    messages: int
    mean_html_bytes: float
    cpu: int | None


def _sentence(rng: random.Random, words: int | None = None) -> str:
    n = words or rng.randint(6, 18)
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def _newsletter(rng: random.Random) -> str:
    parts = [
        '<!DOCTYPE html><html><head><meta charset="utf-8"><style>body{margin:0} .btn{color:#fff}'
        " @media (max-width:600px){.col{width:100%!important}}</style></head><body>"
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0"><tr><td align="center">'
        '<table width="600" style="background:#ffffff"><tr><td><img src="https://cdn.example/logo.png" alt="Logo"></td></tr>'
    ]
    size = 0
    i = 0
    while size < HTML_BYTES - 700:
        i += 1
        block = (
            f'<tr><td class="col" style="padding:16px 24px;font-size:16px;line-height:24px;color:#333333">'
            f'<h2 style="margin:0 0 8px 0">{_sentence(rng, 5)}</h2><p style="margin:0 0 12px 0">'
            f"{' '.join(_sentence(rng) for _ in range(rng.randint(2, 5)))}</p>"
            f"<ul><li>{_sentence(rng)}</li><li>{_sentence(rng)}</li><li><b>{_sentence(rng, 3)}</b> {_sentence(rng)}</li></ul>"
            f'<p><a href="https://click.example/ls/click?upn={i}&amp;x={rng.randrange(10**9)}" class="btn" '
            f'style="display:inline-block;padding:10px 20px">Read more &raquo;</a></p></td></tr>'
        )
        parts.append(block)
        size += len(block)
    parts.append('<tr><td style="font-size:12px">You subscribed. <a href="https://example/unsub">Unsubscribe</a></td></tr></table></td></tr></table></body></html>')
    return "".join(parts)


def _notification(rng: random.Random) -> str:
    rows = []
    size = 0
    while size < HTML_BYTES - 500:
        row = (
            f"<tr><td style=\"border:1px solid #ddd;padding:4px\">{_sentence(rng, 3)}</td>"
            f"<td style=\"border:1px solid #ddd;padding:4px\">{rng.randrange(10**5)}</td>"
            f"<td style=\"border:1px solid #ddd;padding:4px\">{_sentence(rng, 8)}</td></tr>"
        )
        rows.append(row)
        size += len(row)
    return (
        f"<html><body><p>Hello,</p><p>{_sentence(rng)}</p><table>{''.join(rows)}</table>"
        f"<p>{_sentence(rng)}</p></body></html>"
    )


def _reply(rng: random.Random) -> str:
    quoted = []
    size = 0
    while size < HTML_BYTES - 800:
        para = f"<div>{' '.join(_sentence(rng) for _ in range(4))}</div>"
        quoted.append(para)
        size += len(para)
    return (
        f'<div dir="ltr">{_sentence(rng)}<br><br>{_sentence(rng)}</div><br>'
        '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Tue, Mar 4, 2025 at 10:15 AM '
        "Ada Lovelace &lt;ada@example.com&gt; wrote:<br></div>"
        '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid '
        f'rgb(204,204,204);padding-left:1ex">{"".join(quoted)}</blockquote></div>'
    )


def _wrap(html: str, encoding: str, i: int, rng: random.Random, *, reply: bool) -> bytes:
    data = html.encode("utf-8")
    if encoding == "base64":
        encoded = base64.encodebytes(data)
    elif encoding == "quoted-printable":
        encoded = quopri.encodestring(data)
    else:
        encoded = data
    subject = f"{'Re:_' if reply else ''}Message_{i}_=E2=80=94_{_sentence(rng, 4).replace(' ', '_')}"
    lines = [
        f'From: "Sender {i % 50}" <sender{i % 50}@example.com>',
        f"To: Me <me@example.com>, team{i % 7}@example.com",
        f"Subject: =?utf-8?q?{subject}?=",
        f"Date: Tue, 04 Mar 2025 10:{i % 60:02d}:00 +0100",
        f"Message-ID: <bench-{i}@example.com>",
        *([f"In-Reply-To: <bench-{i - 1}@example.com>"] if reply else []),
        "MIME-Version: 1.0",
        "Content-Type: text/html; charset=utf-8",
        f"Content-Transfer-Encoding: {encoding}",
    ]
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode() + encoded


def corpus(count: int, *, seed: int = 15) -> tuple[list[bytes], float]:
    """``count`` raw messages of the three shapes, and their mean HTML size in bytes."""
    rng = random.Random(seed)
    shapes: Sequence[tuple[Callable[[random.Random], str], str]] = (
        (_newsletter, "quoted-printable"),
        (_notification, "base64"),
        (_reply, "8bit"),
    )
    messages = []
    html_bytes = 0
    for i in range(count):
        make, encoding = shapes[i % len(shapes)]
        html = make(rng)
        html_bytes += len(html.encode())
        messages.append(_wrap(html, encoding, i, rng, reply=make is _reply))
    return messages, html_bytes / count


@contextmanager
def one_core() -> Iterator[int | None]:
    """Pin this process to its last CPU while measuring; the CPU, or None if it cannot pin."""
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = max(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def _floor(raw: bytes) -> None:
    msg = _parser.parsebytes(raw)
    for part in msg.walk():
        if not part.is_multipart():
            part.get_payload(decode=True)


def _html_body(raw: bytes) -> str:
    part = _parser.parsebytes(raw)
    return decode_bytes(part.get_payload(decode=True), part.get_content_charset())


def _rates(count: int, work: Callable[[], object]) -> tuple[float, float]:
    """``count / seconds`` of one call of ``work``, by the wall clock and by process CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def measure(count: int, repeats: int) -> ConvertRun:
    """Alternate `repeats` timed passes of the conversion, the stdlib parse and HTML -> text alone."""
    messages, mean_html = corpus(count)
    contexts = [MessageContext(message_id=f"m{i}", own_addresses=("me@example.com",)) for i in range(count)]
    bodies = [_html_body(raw) for raw in messages]
    convert_rates: list[float] = []
    convert_cpu: list[float] = []
    floor_rates: list[float] = []
    html_rates: list[float] = []
    html_cpu: list[float] = []
    with one_core() as cpu:
        for raw, context in zip(messages[:20], contexts):  # warm up: imports, caches
            message_from_mime(raw, context)
        for _ in range(repeats):
            wall, used = _rates(count, lambda: [message_from_mime(raw, context) for raw, context in zip(messages, contexts)])
            convert_rates.append(wall)
            convert_cpu.append(used)
            floor_rates.append(_rates(count, lambda: [_floor(raw) for raw in messages])[0])
            wall, used = _rates(count, lambda: [html_to_text(body) for body in bodies])
            html_rates.append(wall)
            html_cpu.append(used)
    return ConvertRun(convert_rates, floor_rates, html_rates, convert_cpu, html_cpu, count, mean_html, cpu)


def figure(run: ConvertRun) -> Figure:
    """The run as a report figure: median msg/s beside the stdlib parse's, HTML -> text alone and CPU-time rates."""
    fig = rate_figure(
        KEY, LABEL, "msg/s", run.convert,
        baseline_runs=run.floor, baseline_label="stdlib parse + transfer decoding of the same bytes",
        note=f"{run.messages} messages, mean HTML {run.mean_html_bytes / 1024:.1f} KiB, pinned to CPU {run.cpu}",
    )
    fig.extra.update(
        {
            "html_to_text_alone_msg_s": statistics.median(run.html_to_text),
            "cpu_time_msg_s": statistics.median(run.convert_cpu),
            "html_to_text_alone_cpu_time_msg_s": statistics.median(run.html_to_text_cpu),
        }
    )
    return fig


def main(argv: list[str] | None = None) -> int:
    """Measure, print the figure, its table row and the targets line."""
    parser = argparse.ArgumentParser(prog="python -m bench.mail_convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figure as JSON as well")
    args = parser.parse_args(argv)
    fig = figure(measure(args.messages, args.repeats))
    print(f"conversion: {fig.value:,.0f} msg/s (median of {fig.samples}: {', '.join(f'{r:,.0f}' for r in fig.runs)})")
    print(f"baseline:   {fig.baseline:,.0f} msg/s ({fig.baseline_label}); ratio {fig.ratio:.2f}")
    print(f"html->text: {fig.extra['html_to_text_alone_msg_s']:,.0f} msg/s (HTML -> text alone on the same bodies)")
    print(
        f"CPU time:   conversion {fig.extra['cpu_time_msg_s']:,.0f} msg/s, "
        f"HTML -> text alone {fig.extra['html_to_text_alone_cpu_time_msg_s']:,.0f} msg/s"
    )
    print(render_table([fig], [TARGET]))
    if args.json:
        print(json.dumps(fig.as_dict()))
    print("\n".join(summary_lines({fig.key: fig}, [TARGET])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
