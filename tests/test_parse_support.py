"""Builders for synthetic audit entries, shared by the parse tests.

ModSecurity 2.9.7 writes a native entry as ``--<boundary>-<L>--\\n`` + the section's content +
``\\n`` for each section, then ``--<boundary>-Z--\\n``. Sections B and F end with their own
blank line, section H with a newline. The tests in this module check that the builders
produce exactly that shape (byte for byte against real corpus entries in tests/data/), so the
synthetic entries of the other test modules are faithful.
"""
from __future__ import annotations

import json
from pathlib import Path

from modsec_tools.audit.entry import parse_entry

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = REPO_ROOT / "tests" / "data"
BOUNDARY = "5f3c9a1e"
UNIQUE_ID = "aWryTESTx7z821rWArgDkswAAABA"
STAMP = "28/Nov/2026:16:26:42.543458 +0100"
SECTION_A = f"[{STAMP}] {UNIQUE_ID} 127.0.1.103 57425 127.0.0.1 8080"
REQUEST_HEAD = "GET / HTTP/1.1\nHost: www.lab.test\nUser-Agent: curl/8.5.0\nAccept: */*\n"
RESPONSE_HEAD = "HTTP/1.1 403 Forbidden\nContent-Length: 239\nContent-Type: text/html\n"
CRS_FILE = "/usr/share/modsecurity-crs/rules/REQUEST-942-APPLICATION-ATTACK-SQLI.conf"

#: Producer / engine lines every real trailer ends with.
TRAILER_TAIL = [
    "Stopwatch: 1795879602540914 2569 (- - -)",
    "Stopwatch2: 1795879602540914 2569; combined=1817, p1=796, p2=861, p3=0, p4=0, p5=160, "
    "sr=100, sw=0, l=0, gc=0",
    "Response-Body-Transformed: Dechunked",
    "Producer: ModSecurity for Apache/2.9.7 (http://www.modsecurity.org/); OWASP_CRS/3.3.4.",
    "Server: Apache/2.4.71 (Debian)",
    'Engine-Mode: "ENABLED"',
]


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def message(head: str = "Warning. Pattern match \"x\" at ARGS:q.", *, rule: str | None = "942100",
            msg: str = "SQL Injection Attack Detected via libinjection", data: str | None = None,
            severity: str | None = "CRITICAL", tags: tuple[str, ...] = ("attack-sqli",),
            extra: tuple[tuple[str, str], ...] = ()) -> str:
    """One rule message as ModSecurity logs it: head, then ``[key "value"]`` fields, file first."""
    fields = [("file", CRS_FILE), ("line", "45")]
    if rule is not None:
        fields.append(("id", rule))
    fields.append(("msg", msg))
    if data is not None:
        fields.append(("data", data))
    if severity is not None:
        fields.append(("severity", severity))
    fields.append(("ver", "OWASP_CRS/3.3.4"))
    fields += [("tag", tag) for tag in tags]
    fields += list(extra)
    return head + " " + " ".join(f'[{key} "{value}"]' for key, value in fields)


def denial(code: int = 403, phase: int = 2, score: int = 5) -> str:
    return message(f"Access denied with code {code} (phase {phase}). Operator GE matched 5 at "
                   "TX:anomaly_score.", rule="949110",
                   msg=f"Inbound Anomaly Score Exceeded (Total Score: {score})",
                   tags=("attack-generic",))


def trailer(*messages: str, phase: int | None = None, apache_errors: bool = False,
            tail: bool = True) -> list[str]:
    """Section H lines: ``Message:`` per message, optionally the ``Apache-Error:`` copies
    ModSecurity adds, ``Action: Intercepted (phase N)`` when ``phase``, then the usual tail."""
    lines = [f"Message: {text}" for text in messages]
    if apache_errors:
        lines += [f'Apache-Error: [file "apache2_util.c"] [line 275] [level 3] [client '
                  f'127.0.1.103] ModSecurity: {text} [hostname "www.lab.test"] [uri "/"] '
                  f'[unique_id "{UNIQUE_ID}"]' for text in messages]
    if phase is not None:
        lines.append(f"Action: Intercepted (phase {phase})")
    return lines + (list(TRAILER_TAIL) if tail else [])


def native(*, a: str | bytes = SECTION_A, b: str | bytes | None = REQUEST_HEAD,
           c: str | bytes | None = None, i: str | bytes | None = None,
           j: str | bytes | None = None, k: str | bytes | None = None,
           f: str | bytes | None = RESPONSE_HEAD, e: str | bytes | None = "",
           h: list[str] | str | bytes | None = None, extra: list[tuple[str, str | bytes]] = (),
           boundary: str = BOUNDARY, z: bool = True, eol: bytes = b"\n") -> bytes:
    """A native entry in ModSecurity's section order (A B C I J F E H K, extra, Z).

    ``h`` as a list is trailer lines; ``None`` gives a trailer with no messages. ``eol`` is
    the line ending of the structure (boundaries, head lines); bodies are written as given.
    """
    if h is None:
        h = list(TRAILER_TAIL)
    if isinstance(h, list):
        h = "\n".join(h) + "\n"

    def head(value: str | bytes) -> bytes:
        return _b(value).replace(b"\n", eol)

    out = bytearray()
    order = [("A", a, True), ("B", b, True), ("C", c, False), ("I", i, False),
             ("J", j, False), ("F", f, True), ("E", e, False), ("H", h, True),
             ("K", k, True)] + [(letter, body, False) for letter, body in extra]
    for letter, content, is_head in order:
        if content is None:
            continue
        out += f"--{boundary}-{letter}--".encode() + eol
        out += head(content) if is_head else _b(content)
        out += eol
    if z:
        out += f"--{boundary}-Z--".encode() + eol
    return bytes(out)


def json_entry(*, transaction: dict | None = None, request: dict | None = None,
               response: dict | None = None, audit_data: dict | None = None,
               drop: tuple[str, ...] = ()) -> dict:
    """A JSON entry document shaped like ModSecurity 2.9.7's (as a dict; dump it yourself)."""
    document = {
        "transaction": {"time": "28/Nov/2026:10:30:15.631056 --0500",
                        "transaction_id": "awrzh1hRTcAzvyG5gAIU-AAAAAc",
                        "remote_address": "127.0.1.2", "remote_port": 59523,
                        "local_address": "127.0.0.2", "local_port": 8081},
        "request": {"request_line": "GET /index.html?q=1 HTTP/1.1",
                    "headers": {"Host": "api.lab.test", "User-Agent": "curl/8.5.0"}},
        "response": {"protocol": "HTTP/1.1", "status": 403,
                     "headers": {"Content-Type": "text/html"}, "body": ""},
        "audit_data": {"messages": [message(), denial()],
                       "error_messages": [],
                       "action": {"intercepted": True, "phase": 2,
                                  "message": "Operator GE matched 5 at TX:anomaly_score."},
                       "stopwatch": {"p1": 520, "p2": 285, "p3": 0, "p4": 0, "p5": 97},
                       "producer": ["ModSecurity for Apache/2.9.7 (http://www.modsecurity.org/)",
                                    "OWASP_CRS/3.3.4"],
                       "server": "Apache/2.4.71 (Debian)", "engine_mode": "ENABLED"},
    }
    for name, override in (("transaction", transaction), ("request", request),
                           ("response", response), ("audit_data", audit_data)):
        if override is not None:
            document[name].update(override)
    for name in drop:
        section, _, key = name.partition(".")
        if key:
            document[section].pop(key, None)
        else:
            document.pop(section, None)
    return document


def dumps(document: object) -> bytes:
    return json.dumps(document).encode()


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


# --- the builders themselves -------------------------------------------------------------


def test_native_builder_reproduces_a_real_entry_byte_for_byte() -> None:
    real = fixture("native_http09_blocked.log")
    lines = real.decode().split("\n")
    boundary = lines[0][2:10]
    trailer = real.decode().split(f"--{boundary}-H--\n")[1].split(f"\n--{boundary}-Z--")[0]
    built = native(a=lines[1], b="GET /index.html\n", f="", e="", boundary=boundary,
                   h=trailer)
    assert built == real


def test_native_builder_body_sections_are_verbatim() -> None:
    real = fixture("native_request_body.log")
    boundary = real[2:10].decode()
    text = real.decode()
    a_line = text.split("\n")[1]
    request_head = text.split(f"--{boundary}-B--\n")[1].split(f"\n--{boundary}-C--")[0]
    response_head = text.split(f"--{boundary}-F--\n")[1].split(f"\n--{boundary}-E--")[0]
    trailer = text.split(f"--{boundary}-H--\n")[1].split(f"\n--{boundary}-Z--")[0]
    built = native(a=a_line, b=request_head, c='{"item": 1, "qty": ', f=response_head,
                   e="", h=trailer, boundary=boundary)
    assert built == real


def test_builders_produce_entries_the_parser_accepts() -> None:
    event = parse_entry(native(h=trailer(message(), denial(), phase=2)), "built")
    assert event.unique_id == UNIQUE_ID and event.rule_ids == ["942100", "949110"]
    assert not event.incomplete and event.problems == []
    event = parse_entry(dumps(json_entry()), "built.json")
    assert event.unique_id == "awrzh1hRTcAzvyG5gAIU-AAAAAc" and event.status == 403
