"""`modsec-tools parse` as a user runs it: a subprocess over the corpus and broken inputs."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modsec_tools.audit.event import raw
from modsec_tools.eventline import format_line, parse_line
from tests import corpus
from tests.test_parse_support import REPO_ROOT, fixture, native

CONTRACT = {  # key: allowed types
    "unique_id": (str,), "timestamp": (str,), "client_ip": (str, type(None)),
    "peer_ip": (str, type(None)), "method": (str, type(None)), "uri": (str, type(None)),
    "protocol": (str, type(None)), "host": (str, type(None)),
    "user_agent": (str, type(None)), "status": (int, type(None)), "intercepted": (bool,),
    "phase": (int, type(None)), "anomaly_score": (int, type(None)), "rule_ids": (list,),
    "messages": (list,), "engine_mode": (str, type(None)), "source": (str,),
}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """An empty configuration, so the host's /etc/modsec-tools cannot change the results."""
    path = tmp_path_factory.mktemp("cli") / "modsec-tools.conf"
    path.write_text("[modsec-tools]\n")
    return path


def cli(*args: str, config: Path | None = None, stdin: bytes | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "modsec_tools.cli", *args]
    if config is not None and len(args) > 0 and args[0] == "parse":
        argv[4:4] = ["--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "LC_ALL": "C.UTF-8"}
    return subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=120,
                          cwd=cwd or REPO_ROOT)


def objects(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(text) for text in result.stdout.decode("ascii").splitlines()]


def check_contract(record: dict) -> None:
    for key, types in CONTRACT.items():
        assert key in record, key
        assert isinstance(record[key], types), (key, record[key])
    stamp = dt.datetime.fromisoformat(record["timestamp"])
    assert stamp.tzinfo is not None and len(record["timestamp"].split(".")[1]) == 6 + 6
    assert all(isinstance(rule, str) and rule for rule in record["rule_ids"])
    for message in record["messages"]:
        assert isinstance(message, dict) and isinstance(message["text"], str)
        assert {"id", "msg", "data", "severity", "tags", "file", "line"} <= set(message)
    assert record["rule_ids"] == [m["id"] for m in record["messages"] if m["id"] is not None]
    if record["phase"] is not None:
        assert 1 <= record["phase"] <= 5


def parse_inputs(run: str, scratch: Path) -> list[str]:
    index = corpus.run_dir(run) / "audit" / "index.log"
    if index.exists():
        storage = corpus.extract_storage(run, scratch)
        return ["--storage-dir", str(storage), str(index)]
    return [str(corpus.run_dir(run) / "audit" / "audit_serial.log")]


@pytest.mark.parametrize("run", corpus.runs("r1_relevant_concurrent", "r3_json_concurrent",
                                             "r4_json_serial", "r5_serial",
                                             "r6_detectiononly_concurrent"))
def test_json_output_carries_the_contract(run: str, config: Path, tmp_path_factory) -> None:
    scratch = Path(tmp_path_factory.getbasetemp()) / "corpus"
    result = cli("parse", "--format", "json", *parse_inputs(run, scratch), config=config)
    assert result.returncode == 0, result.stderr.decode()
    assert b"ERROR" not in result.stderr
    records = objects(result)
    assert len(records) == corpus.run_info(run)["audit_entries"]
    truth = corpus.truth(run)
    for record in records:
        check_contract(record)
        row = truth[record["unique_id"]]
        assert record["status"] == row["status"]
        assert record["intercepted"] == row["intercepted"]
        assert record["method"] == row["method"]
        assert sorted(record["rule_ids"]) == sorted(row["rule_ids"])
        assert record["client_ip"] == row["client_ip"]
        assert record["verdict"] in ("blocked", "detected", "passed")
        assert record["engine_mode"] == ("DETECTION_ONLY" if run.startswith("r6") else "ENABLED")


def test_json_output_keeps_non_utf8_bytes(config: Path, tmp_path_factory) -> None:
    run = "r1_relevant_concurrent"
    scratch = Path(tmp_path_factory.getbasetemp()) / "corpus"
    result = cli("parse", str(corpus.extract_storage(run, scratch)), config=config)
    assert result.returncode == 0
    truth = corpus.truth(run)
    checked = 0
    for record in objects(result):
        if any(0xDC80 <= ord(ch) <= 0xDCFF for ch in record["uri"] or ""):
            row = truth[record["unique_id"]]
            expected = row.get("uri_b64") and __import__("base64").b64decode(row["uri_b64"])
            assert raw(record["uri"]) == (expected or row["uri"].encode())
            checked += 1
    assert checked >= 1


@pytest.mark.parametrize("run", ["r1_relevant_concurrent", "r4_json_serial"])
def test_line_output_parses_back(run: str, config: Path, tmp_path_factory) -> None:
    scratch = Path(tmp_path_factory.getbasetemp()) / "corpus"
    result = cli("parse", "--format", "line", "--node", "web-1", *parse_inputs(run, scratch),
                 config=config)
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode("ascii")
    lines = text.splitlines()
    assert len(lines) == corpus.run_info(run)["audit_entries"]
    truth = corpus.truth(run)
    for line in lines:
        parsed = parse_line(line)
        assert format_line(parsed) == line and parsed.node == "web-1"
        row = truth[parsed.id]
        assert parsed.client == row["client_ip"]
        assert parsed.status == str(row["status"])
        assert (parsed.verdict == "blocked") == row["intercepted"]


def test_trusted_proxies_flag(config: Path, tmp_path_factory) -> None:
    run = "r7_pl2_concurrent_noremoteip"
    scratch = Path(tmp_path_factory.getbasetemp()) / "corpus"
    plain = {r["unique_id"]: r for r in objects(cli("parse", *parse_inputs(run, scratch),
                                                    config=config))}
    result = cli("parse", "--trusted-proxies", "127.0.2.0/24, ::1", *parse_inputs(run, scratch),
                 config=config)
    assert result.returncode == 0
    truth = corpus.truth(run)
    moved = 0
    for record in objects(result):
        sent = truth[record["unique_id"]]["sent"] or {}
        actor = sent.get("actor") or ""
        if actor.startswith("proxied:") and sent.get("xff_sent") is None:
            # its proxy sent X-Real-IP, and proxy_header is X-Forwarded-For: no client
            assert (record["client_ip"], record["client_unbannable"]) == (None, "proxy-no-header")
        elif actor.startswith("proxied:"):
            assert record["client_ip"] == actor.split(":", 1)[1]
            assert plain[record["unique_id"]]["client_ip"] == record["peer_ip"]
            moved += 1
        elif actor == "monitor":  # a health check from inside the proxies' range: no client
            assert (record["client_ip"], record["client_unbannable"]) == (None, "proxy-no-header")
        else:
            assert record["client_ip"] == record["peer_ip"]
    assert moved >= 10


# -- stdin, files, exit status -------------------------------------------------------------


def test_dash_reads_standard_input(config: Path) -> None:
    log = corpus.run_dir("r5_serial") / "audit" / "audit_serial.log"
    from_file = objects(cli("parse", str(log), config=config))
    result = cli("parse", "-", config=config, stdin=log.read_bytes())
    assert result.returncode == 0
    from_stdin = objects(result)
    assert [r["unique_id"] for r in from_stdin] == [r["unique_id"] for r in from_file]
    assert from_stdin[0]["source"] == "<stdin>"
    assert from_stdin[1]["source"].startswith("<stdin>:")


def test_dash_reads_json_lines_and_single_entries(config: Path) -> None:
    data = fixture("json_blocked.json").replace(b"\n", b"") + b"\n" + \
        fixture("native_http09_blocked.log")
    result = cli("parse", "--format", "line", "-", config=config, stdin=data)
    assert result.returncode == 0
    ids = [parse_line(line).id for line in result.stdout.decode().splitlines()]
    assert ids == ["awrzfVhRTcAzvyG5gAIUagAAAA4", "awry-Qgx7z821rWArgDpuAAAABM"]


def test_single_entry_files(config: Path, tmp_path: Path) -> None:
    result = cli("parse", str(REPO_ROOT / "tests" / "data" / "native_multipart_blocked.log"),
                 str(REPO_ROOT / "tests" / "data" / "json_http09_blocked.json"), config=config)
    assert result.returncode == 0
    records = objects(result)
    assert [r["unique_id"] for r in records] == ["awry0ggx7z821rWArgDm9gAAABQ",
                                                 "awrzh1hRTcAzvyG5gAIU-AAAAAc"]
    for record in records:
        check_contract(record)
    assert records[1]["status"] == 403 and records[1]["protocol"] == "HTTP/0.9"
    assert records[0]["timestamp"] == "2026-11-28T16:27:14.689594+01:00"
    assert records[1]["timestamp"] == "2026-11-28T10:30:15.631056-05:00"


def test_exit_1_when_some_input_fails(config: Path, tmp_path: Path) -> None:
    good = REPO_ROOT / "tests" / "data" / "native_multipart_blocked.log"
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)))
    broken = tmp_path / "broken-section-a.log"
    broken.write_bytes(native(a="not a section A"))
    missing = tmp_path / "missing.log"
    result = cli("parse", str(good), str(garbage), str(broken), str(missing), config=config)
    assert result.returncode == 1
    assert [r["unique_id"] for r in objects(result)] == ["awry0ggx7z821rWArgDm9gAAABQ"]
    errors = result.stderr.decode()
    assert f"{garbage}: not an audit log" in errors
    assert f"{broken}: section A" in errors
    assert f"{missing}: No such file" in errors
    assert len([line for line in errors.splitlines() if "ERROR" in line]) == 3


def test_exit_1_for_an_index_line_that_does_not_match_its_file(config: Path,
                                                                tmp_path: Path) -> None:
    data = fixture("native_http09_blocked.log")
    relpath = "/www-data/20261128/20261128-1627/20261128-162753-awry-Qgx7z821rWArgDpuAAAABM"
    (tmp_path / relpath.strip("/")).parent.mkdir(parents=True)
    (tmp_path / relpath.strip("/")).write_bytes(data + b"tampered")
    index = tmp_path / "index.log"
    index.write_text(f'www.lab.test 127.0.1.70 - - [28/Nov/2026:16:27:53.799535 +0100] '
                     f'"GET /index.html" 403 239 "-" "-" awry-Qgx7z821rWArgDpuAAAABM "-" '
                     f'{relpath} 0 {len(data)} md5:{hashlib.md5(data).hexdigest()}\n'
                     f'www.lab.test 1.2.3.4 - - [x] "GET /" 200 1 "-" "-" id "-" /../../etc/'
                     f'passwd 0 1 md5:{"0" * 32}\n')
    result = cli("parse", "--storage-dir", str(tmp_path), str(index), config=config)
    assert result.returncode == 1 and result.stdout == b""
    errors = result.stderr.decode()
    assert "size" in errors and relpath.rsplit("/", 1)[1] in errors
    assert "outside the storage layout" in errors


def test_exit_1_for_an_oversized_entry(config: Path) -> None:
    result = cli("parse", "--max-entry-size", "1K",
                 str(REPO_ROOT / "tests" / "data" / "native_multipart_blocked.log"), config=config)
    assert result.returncode == 1
    assert b"larger than max_entry_size" in result.stderr and result.stdout == b""


def test_truncated_entry_is_printed_with_a_warning(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.log"
    data = fixture("native_multipart_blocked.log")
    path.write_bytes(data[:len(data) // 2])
    result = cli("parse", str(path), config=config)
    (record,) = objects(result)
    assert record["incomplete"] is True and record["problems"]
    assert b"WARNING" in result.stderr and b"Z boundary" in result.stderr


@pytest.mark.parametrize("args", [
    ["parse", "--no-such-flag", "x"],
    ["parse", "--trusted-proxies", "not-a-network", "x"],
    ["parse", "--trusted-proxies", "10.0.0.0/33", "x"],
    ["parse", "--detect-min-severity", "SEVERE", "x"],
    ["parse", "--detect-min-score", "five", "x"],
    ["parse", "--max-entry-size", "0", "x"],
    ["parse", "--node", "bad node", "x"],
    ["parse", "--format", "xml", "x"],
    ["parse"],
    ["frobnicate"],
    [],
])
def test_exit_2_on_usage_errors(args: list[str], config: Path) -> None:
    result = cli(*args, config=config)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.strip() and result.stdout == b""


def test_exit_2_for_a_missing_config_file(tmp_path: Path) -> None:
    result = cli("parse", "--config", str(tmp_path / "nope.conf"), "x")
    assert result.returncode == 2 and b"no such configuration file" in result.stderr


def test_help_mentions_exit_status() -> None:
    result = cli("--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "exit status" in text
    for code in ("0", "1", "2"):
        assert f"\n  {code}  " in text


def test_parse_help_mentions_exit_status() -> None:
    """Regression (fixed in b99618a): only the top-level --help documented it."""
    result = cli("parse", "--help")
    assert result.returncode == 0
    assert "exit status" in result.stdout.decode()


def test_parse_help_lists_the_json_contract_keys() -> None:
    text = cli("parse", "--help").stdout.decode()
    for key in ("unique_id", "timestamp", "client_ip", "rule_ids", "--format", "--trusted-proxies"):
        assert key in text


def test_entries_found_inside_an_unfinished_entry_are_reported_not_printed(
        config: Path, tmp_path: Path) -> None:
    """After a crash (or a boundary forged in a body) the entries found inside an entry that
    never ended cannot be trusted: parse names them on stderr and exits 1."""
    first = fixture("native_multipart_blocked.log")
    cut = fixture("native_ipv6_upload.log")[:700]
    inner = [fixture("native_http09_blocked.log"), fixture("native_latin1_uri.log")]
    log = tmp_path / "audit.log"
    log.write_bytes(first + cut + b"\n" + b"".join(inner))
    result = cli("parse", "--format", "line", str(log), config=config)
    assert result.returncode == 1
    ids = [parse_line(line).id for line in result.stdout.decode().splitlines()]
    assert ids == ["awry0ggx7z821rWArgDm9gAAABQ", "awry4E3cMStzAXZQRbCPRQAAAAo"]
    errors = result.stderr.decode()
    offset = len(first) + len(cut) + 1
    assert f"{log}:{offset}: entry found inside an earlier entry" in errors
    assert f"{log}:{offset + len(inner[0])}:" in errors
    assert "not trusted" in errors and "Z boundary" in errors  # the cut one: a warning
