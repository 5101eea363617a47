"""`python -m bench [--quick] [--only SECTION ...] [--out FILE]`: run the benchmarks, print the table.

The output ends with exactly one line `targets: N met, M missed`, then one line per missed
target. The exit status is 0 whenever the run itself completed (missed targets are results,
not crashes); `--strict` makes missed targets exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.report import render_table, summary_lines, write_json
from bench.suite import CATALOGUE, FULL, QUICK, Run, dump_meta, targets

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("jwt", "mail", "http", "stream", "ingest", "live", "workers", "cluster", "search", "scale")


def main(argv: list[str] | None = None) -> int:
    """Run, print, write JSON; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short pass (make bench-quick, under a minute)")
    parser.add_argument("--only", action="append", choices=SECTIONS, default=[], help="run only these sections")
    parser.add_argument("--out", type=Path, help="JSON results file (default bench/results/<plan>-<time>.json)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", type=_setting,
        help="override a brain setting on every server of the run, for experiments (e.g. log.access_log=false)",
    )
    args = parser.parse_args(argv)

    overrides: dict[str, dict[str, Any]] = {}
    for section, key, value in args.set:
        overrides.setdefault(section, {})[key] = value
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    run = Run(plan, only=args.only, overrides=overrides)
    run.execute()
    elapsed = time.monotonic() - started
    figures = [run.figures[key] for key, _, _ in CATALOGUE]
    goals = targets(run.max_open_stores)
    out = args.out or RESULTS / f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    run.meta["seconds"] = round(elapsed, 1)
    write_json(out, meta=run.meta, figures=figures, targets=goals)

    print()
    print(f"brain benchmarks ({plan.name}, {elapsed:.0f}s) — {dump_meta(run.meta)}")
    print("2-core machine, shared with other work: read ratios (same run) before absolute figures.")
    print(render_table(figures, goals))
    print(f"results: {out}")
    lines = summary_lines({f.key: f for f in figures}, goals)
    print("\n".join(lines))
    missed = not lines[0].endswith(" 0 missed")
    return 1 if (args.strict and missed) else 0


def _setting(text: str) -> tuple[str, str, Any]:
    """`section.key=value`, the value read as JSON when it is JSON (numbers, booleans, lists)."""
    name, eq, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not eq or not dot or not section or not key:
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return section, key, value


if __name__ == "__main__":
    sys.exit(main())
