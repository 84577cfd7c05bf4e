#!/usr/bin/env python3
"""Cut the slices in this directory out of the lab's full corpus (the directory $MODSEC_CORPUS or --corpus names).

Run once by hand; the tests never run it. For each run it keeps a subset of the audit
entries, exactly as ModSecurity wrote them, with their index lines and truth rows:

1. every kind of entry the run has (greedy cover of: each rule id, status, interception
   action and phase, protocol, method, vhost, client kind, attack category, minute
   directory, IPv6 client, non-UTF-8 URI, message without id, the largest entry, ...),
   and every entry of a kind the run has at most twice;
2. quotas some tests count on (proxied and XFF-spoofing clients);
3. a seeded random sample of the rest up to the run's size, so the mix stays the run's.

Entries keep their original order; truth rows are kept whole (gzipped: they are most of
the size). ``run.json`` keeps the run's configuration; its counts
describe the slice, and ``sliced_from`` the full run.

usage: python3 tests/data/corpus/make_slices.py --corpus DIR
"""
from __future__ import annotations

import argparse
import os
import gzip
import hashlib
import io
import json
import random
import re
import shutil
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = {"r1_relevant_concurrent": 240, "r2_auditengine_on_concurrent": 64,
         "r3_json_concurrent": 48, "r4_json_serial": 40, "r5_serial": 40,
         "r6_detectiononly_concurrent": 48, "r7_pl2_concurrent_noremoteip": 48}
#: (client kind, at least): some tests count proxied clients and XFF spoofers.
QUOTAS = (("proxied", 14), ("direct-spoofing-xff", 5))
SEED = 17
RARE = 2  # entries of a kind seen this often or less are all kept
_INDEX_TAIL = re.compile(rb" (/\S+) \d+ \d+ md5:[0-9a-f]{32}\s*$")
_NATIVE_START = re.compile(rb"^--[0-9a-fA-F]{8,32}-A--\r?$", re.M)
_NATIVE_ID = re.compile(rb"\A--[0-9a-fA-F]{8,32}-A--\r?\n\[[^\]\n]*\] (\S+) ")
_JSON_ID = re.compile(rb'"transaction_id":\s*"([^"]+)"')
#: run.json keys that count the whole run; the slice recounts them.
COUNTS = ("requests_sent", "requests_client_error", "access_log_lines", "access_lines_unparsed",
          "error_lines_unparsed", "audit_entries", "audit_files", "audit_bytes",
          "status_counts", "top_rules", "intercepted", "send_seconds")


@dataclass
class Entry:
    uid: str
    data: bytes
    relpath: str | None = None  # Concurrent
    index_line: bytes | None = None


def concurrent_entries(audit: Path) -> tuple[list[Entry], dict[str, tarfile.TarInfo]]:
    with tarfile.open(audit / "storage.tar.gz") as archive:
        members = {m.name: m for m in archive.getmembers()}
        files = {name: archive.extractfile(m).read() for name, m in members.items()
                 if m.isfile()}
    entries = []
    for line in (audit / "index.log").read_bytes().splitlines(keepends=True):
        relpath = _INDEX_TAIL.search(line).group(1).decode()
        uid = relpath.rsplit("/", 1)[1].split("-", 2)[2]
        entries.append(Entry(uid, files["storage" + relpath], relpath, line))
    return entries, members


def serial_entries(log: bytes) -> list[Entry]:
    if log.startswith(b"{"):
        pieces = log.splitlines(keepends=True)
    else:
        starts = [m.start() for m in _NATIVE_START.finditer(log)] + [len(log)]
        assert starts[0] == 0
        pieces = [log[a:b] for a, b in zip(starts, starts[1:])]
    assert b"".join(pieces) == log
    entries = []
    for piece in pieces:
        match = _NATIVE_ID.match(piece) or _JSON_ID.search(piece)
        entries.append(Entry(match.group(1).decode(), piece))
    return entries


def features(entry: Entry, row: dict) -> set[str]:
    sent = row.get("sent") or {}
    actor = (sent.get("actor") or "").split(":")[0]  # "proxied:<client>" is one kind
    found = {f"rule:{r}" for r in row["rule_ids"]}
    found |= {f"status:{row['status']}", f"protocol:{row['protocol']}",
              f"method:{row['method']}", f"vhost:{row['vhost']}", f"host:{row['host']}",
              f"action:{row['intercept_action']}:{row['intercept_phase']}",
              f"allowed:{row['allowed_by_rule']}", f"actor:{actor}",
              f"category:{sent.get('category')}", f"location:{sent.get('location')}",
              f"encoding:{sent.get('encoding')}", f"remoteip:{row['forwarded_by_remoteip']}",
              f"score:{row['anomaly_score_inbound'] is None}"}
    if ":" in (row["client_ip"] or ""):
        found.add("ipv6")
    if row.get("uri_b64"):
        found.add("uri_b64")
    if row["modsec_messages_without_id"]:
        found.add("message_without_id")
    if row["apache_errors"]:
        found.add("apache_error")
    if entry.relpath:
        found.add("dir:" + entry.relpath.rsplit("/", 1)[0])
    try:
        entry.data.decode("utf-8")
    except UnicodeDecodeError:
        found.add("not_utf8")
    return found


def choose(entries: list[Entry], truth: dict[str, dict], size: int) -> list[Entry]:
    by_uid = {e.uid: e for e in entries}
    want = {e.uid: features(e, truth[e.uid]) for e in entries}
    biggest = max(entries, key=lambda e: len(e.data)).uid
    counts = Counter(f for found in want.values() for f in found)
    chosen = [u for u in want if u == biggest or any(counts[f] <= RARE for f in want[u])]
    covered = set().union(*(want[u] for u in chosen))
    while True:  # greedy cover, smaller entries first among equals
        best = max((uid for uid in want if uid not in chosen),
                   key=lambda u: (len(want[u] - covered), -len(by_uid[u].data)), default=None)
        if best is None or not want[best] - covered:
            break
        chosen.append(best)
        covered |= want[best]
    rng = random.Random(SEED)
    for kind, least in QUOTAS:
        have = sum(f"actor:{kind}" in want[u] for u in chosen)
        more = [u for u in want if u not in chosen and f"actor:{kind}" in want[u]]
        chosen += rng.sample(more, min(len(more), max(0, least - have)))
    rest = [u for u in want if u not in chosen]
    chosen += rng.sample(rest, min(len(rest), max(0, size - len(chosen))))
    keep = set(chosen)
    return [e for e in entries if e.uid in keep]


def write_tar(path: Path, members: dict[str, tarfile.TarInfo], kept: list[Entry]) -> None:
    """The kept entries and their directories, with the original owners, modes and times."""
    names = {"storage" + e.relpath: e.data for e in kept}
    dirs = {str(Path(n).parent) for n in names}
    dirs |= {str(p) for d in list(dirs) for p in Path(d).parents if str(p) != "."}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, info in members.items():  # the original order: parents first
            if info.isdir() and name in dirs:
                archive.addfile(info)
            elif name in names:
                archive.addfile(info, io.BytesIO(names[name]))
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                filename="") as stream:
        stream.write(buffer.getvalue())


def run_json(info: dict, kept: list[Entry], rows: list[dict]) -> dict:
    out = {k: v for k, v in info.items() if k not in COUNTS}
    out["sliced_from"] = {k: info[k] for k in COUNTS if k in info}
    rules = Counter(r for row in rows for r in row["rule_ids"])
    out.update(access_log_lines=len(rows), audit_entries=len(kept),
               audit_files=len(kept) if kept[0].relpath else 1,
               audit_bytes=sum(len(e.data) for e in kept),
               intercepted=sum(row["intercepted"] for row in rows),
               status_counts={str(k): v for k, v in
                              sorted(Counter(row["status"] for row in rows).items())},
               top_rules=rules.most_common(25))
    return out


def slice_run(source: Path, target: Path, size: int) -> None:
    audit = source / "audit"
    truth_lines = (source / "truth.jsonl").read_bytes().splitlines(keepends=True)
    truth = {row["unique_id"]: row for row in map(json.loads, truth_lines) if row["unique_id"]}
    members = None
    if (audit / "storage.tar.gz").exists():
        entries, members = concurrent_entries(audit)
    else:
        entries = serial_entries((audit / "audit_serial.log").read_bytes())
    kept = choose(entries, truth, size)
    ids = {e.uid for e in kept}
    if target.exists():
        shutil.rmtree(target)
    (target / "audit").mkdir(parents=True)
    if members is not None:
        write_tar(target / "audit" / "storage.tar.gz", members, kept)
        (target / "audit" / "index.log").write_bytes(b"".join(e.index_line for e in kept))
    else:
        (target / "audit" / "audit_serial.log").write_bytes(b"".join(e.data for e in kept))
    lines = [line for line in truth_lines if json.loads(line)["unique_id"] in ids]
    with open(target / "truth.jsonl.gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as stream:
        stream.write(b"".join(lines))
    info = json.loads((source / "run.json").read_text())
    slim = run_json(info, kept, [json.loads(line) for line in lines])
    (target / "run.json").write_text(json.dumps(slim, indent=1) + "\n")
    shutil.copy(source / "modsecurity.conf", target / "modsecurity.conf")
    digest = hashlib.sha256(b"".join(e.data for e in kept)).hexdigest()[:16]
    print(f"{source.name}: {len(kept)} of {len(entries)} entries, "
          f"{sum(len(e.data) for e in kept)} bytes, sha256 {digest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required="MODSEC_CORPUS" not in os.environ,
                        default=os.environ.get("MODSEC_CORPUS"))
    args = parser.parse_args()
    for run, size in SIZES.items():
        slice_run(args.corpus / run, HERE / run, size)


if __name__ == "__main__":
    main()
