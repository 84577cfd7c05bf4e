#!/usr/bin/env python3
"""Parser throughput on the shared corpus, entries already in memory, one core.

Prints entries/s for native Concurrent entries, native Serial, JSON Concurrent and JSON
Serial, each next to a naive baseline measured in the same run: one ``re.search`` per field
over the whole entry text, first match only, as the original cron script did (it extracts
one message per entry, while ours builds the full Event with every message and field).
Rounds alternate ours/baseline and the best round of each is kept (CPU time), so a busy
machine penalizes both alike. The parser's cache of parsed rule messages is emptied before
each round: a round sees the corpus as a first pass would, repeated messages within it
included (as in a flood), never the previous round's.

usage: python3 bench/parse.py [--rounds N] [--corpus DIR]
(any python3 >= 3.11: Debian's own, built with PGO/LTO, runs both parsers faster than a
plain source build such as a pyenv python: compare figures from the same interpreter)

Wall-clock rates on a shared VM move by +-30 % from minute to minute; instruction counts do
not. --once ours|naive|none parses the r1 entries once and prints nothing, for
valgrind --tool=callgrind: (count of ours - count of none) / 1224 is ours' instructions per
entry (the same for naive), whatever else the machine is doing.
"""
from __future__ import annotations

import argparse
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modsec_tools.audit.entry import parse_entry  # noqa: E402
from modsec_tools.audit.messages import keep_messages  # noqa: E402
from modsec_tools.audit.serial import split_serial  # noqa: E402

# The fields the original tool stored, one regex each, searched over the whole entry.
NAIVE_FIELDS = [re.compile(p) for p in (
    r"\] \S+ (\S+) \d+ \S+ \d+", r"\n(\w+) \S+ HTTP", r"\n\w+ (\S+) HTTP", r"Host: (.*)",
    r"User-Agent: (.*)", r'\[id "(\d+)"\]', r'\[msg "([^"]*)"\]', r'\[data "([^"]*)"\]',
    r'\[severity "(\w+)"\]', r'\[maturity "(\d+)"\]', r'\[accuracy "(\d+)"\]',
    r"\] (\S+) \d+ \S+ \d+\n", r"HTTP/\d\.\d (\d+ .*)", r'Engine-Mode: "(\w+)"',
    r"Total (?:Inbound )?Score: (\d+)", r"SQLI=(\d+)", r"XSS=(\d+)", r"\(phase (\d)\)",
    r"^\[([^\]]+)\]")]


def naive(entry: bytes) -> list:
    text = entry.decode("utf-8", "replace")
    return [pattern.search(text) for pattern in NAIVE_FIELDS]


def ours(entry: bytes) -> object:
    return parse_entry(entry, "bench")


def best_rate(function, entries: list[bytes], rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        keep_messages(1024)  # an empty cache
        started = time.process_time()
        for entry in entries:
            function(entry)
        elapsed = time.process_time() - started
        best = max(best, len(entries) / elapsed)
    return best


def concurrent_entries(run_dir: Path, scratch: Path) -> list[bytes]:
    with tarfile.open(run_dir / "audit" / "storage.tar.gz") as archive:
        # (extraction filters came with Python 3.11.4; Debian 12's python3 is 3.11.2)
        extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        archive.extractall(scratch / run_dir.name, **extra)
    files = sorted(p for p in (scratch / run_dir.name).rglob("*") if p.is_file())
    return [p.read_bytes() for p in files]


def serial_entries(run_dir: Path) -> list[bytes]:
    with open(run_dir / "audit" / "audit_serial.log", "rb") as stream:
        return [piece.data for piece in split_serial(stream)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--once", choices=("ours", "naive", "none"),
                        help="parse r1 once, print nothing (for callgrind; see above)")
    parser.add_argument("--corpus", type=Path,
                        default=Path(__file__).resolve().parent.parent.parent / "shared" / "corpus")
    args = parser.parse_args()
    if args.once:
        with tempfile.TemporaryDirectory() as scratch:
            entries = concurrent_entries(args.corpus / "r1_relevant_concurrent", Path(scratch))
        keep_messages(1024)  # an empty cache
        for entry in entries if args.once != "none" else ():
            (ours if args.once == "ours" else naive)(entry)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        sets = {
            "native Concurrent (r1)": concurrent_entries(args.corpus / "r1_relevant_concurrent",
                                                         Path(scratch)),
            "native Serial (r5)": serial_entries(args.corpus / "r5_serial"),
            "JSON Concurrent (r3)": concurrent_entries(args.corpus / "r3_json_concurrent",
                                                       Path(scratch)),
            "JSON Serial (r4)": serial_entries(args.corpus / "r4_json_serial"),
        }
    print(f"python {sys.version.split()[0]} ({sys.executable})")
    print(f"{'input':<24} {'entries':>7} {'KB/entry':>8} {'ours e/s':>10} "
          f"{'naive e/s':>10} {'ratio':>6}")
    for name, entries in sets.items():
        size = sum(map(len, entries)) / len(entries) / 1024
        rate_ours = rate_naive = 0.0
        for _ in range(args.rounds):  # alternate so both see the same machine state
            rate_ours = max(rate_ours, best_rate(ours, entries, 1))
            rate_naive = max(rate_naive, best_rate(naive, entries, 1))
        print(f"{name:<24} {len(entries):>7} {size:>8.1f} {rate_ours:>10.0f} "
              f"{rate_naive:>10.0f} {rate_ours / rate_naive:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
