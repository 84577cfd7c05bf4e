"""The watcher gives a burst's heap back once idle (daemon/heap.py)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from modsec_tools.daemon.heap import HeapTrimmer
from tests.ingest_helpers import REPO


def test_trims_once_per_burst_after_the_idle_time():
    heap = HeapTrimmer(idle_seconds=30)
    assert not heap.tick(0, now=1000)             # nothing processed yet: nothing to give back
    assert not heap.tick(0, now=2000)
    assert not heap.tick(500, now=2001)           # a burst
    assert not heap.tick(500, now=2030)           # idle, not long enough
    assert heap.tick(500, now=2031.5)             # idle 30 s: trimmed
    assert not heap.tick(500, now=3000)           # once
    assert not heap.tick(501, now=3001)
    assert heap.tick(501, now=3032)               # the next burst's


def test_a_freed_burst_leaves_the_resident_set():
    """What the daemon holds after a backlog: entries' bytes, freed but for a few. glibc
    keeps the pages between the survivors until trimmed; the trim gives most of them back."""
    script = textwrap.dedent("""
        import sys
        from modsec_tools.daemon.heap import HeapTrimmer
        def rss_kb():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        base = rss_kb()
        # entries' bytes (a few KB each, from malloc), a few kept here and there
        burst = [bytes(4000) + str(n).encode() for n in range(50_000)]
        keep = burst[::100]
        del burst
        before = rss_kb()
        heap = HeapTrimmer(idle_seconds=0)
        heap.tick(1, now=0.0)
        assert heap.tick(1, now=1.0)
        print(base, before, rss_kb())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, check=True)
    base, before, after = map(int, done.stdout.split())
    assert before - base > 100_000, (base, before, after)     # the burst stayed resident
    assert after - base < (before - base) / 4, (base, before, after)


def test_the_parsers_caches_go_with_the_trim():
    from modsec_tools.audit import clientip, messages
    messages.parse_message('Access denied [file "/x.conf"] [id "942100"] [unique_id "a"]')
    clientip.normalize_ip("2001:db8::1")
    assert messages._cached_message.cache_info().currsize and clientip.normalize_ip.cache_info().currsize
    heap = HeapTrimmer(idle_seconds=1)
    heap.tick(1, now=0.0)
    assert heap.tick(1, now=2.0)
    assert messages._cached_message.cache_info().currsize == 0
    assert clientip.normalize_ip.cache_info().currsize == 0
