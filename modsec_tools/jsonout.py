"""Events as JSON objects: the `modsec-tools parse --format json` contract.

Text that was not valid UTF-8 comes out with lone surrogates escaped as ``\\udcXX``
(Python's surrogateescape), so ``json.loads`` + ``encode("utf-8", "surrogateescape")``
gives back the original bytes.
"""
from __future__ import annotations

import json
from typing import Any

from .audit.event import Event, Message


def message_to_dict(message: Message) -> dict[str, Any]:
    return {"text": message.text, "id": message.rule_id, "msg": message.msg,
            "data": message.data, "severity": message.severity, "ver": message.ver,
            "maturity": message.maturity, "accuracy": message.accuracy, "tags": message.tags,
            "file": message.file, "line": message.line, "fields": message.fields}


def event_to_dict(event: Event, verdict: str | None = None) -> dict[str, Any]:
    return {
        "unique_id": event.unique_id,
        "timestamp": event.timestamp.isoformat(timespec="microseconds") if event.timestamp else None,
        "client_ip": event.client_ip, "client_unbannable": event.client_unbannable,
        "peer_ip": event.peer_ip, "peer_port": event.peer_port,
        "local_ip": event.local_ip, "local_port": event.local_port,
        "method": event.method, "uri": event.uri, "protocol": event.protocol,
        "host": event.host, "user_agent": event.user_agent,
        "status": event.status, "intercepted": event.intercepted, "phase": event.phase,
        "verdict": verdict,
        "anomaly_score": event.anomaly_score, "scores": event.scores,
        "score_source": event.score_source, "severity": event.severity,
        "rule_ids": event.rule_ids,
        "messages": [message_to_dict(m) for m in event.messages],
        "engine_mode": event.engine_mode, "producer": event.producer, "server": event.server,
        "request_headers": event.request_headers, "response_status_line": event.response_status_line,
        "source": event.source, "incomplete": event.incomplete, "problems": event.problems,
    }


def dumps(event: Event, verdict: str | None = None) -> str:
    return json.dumps(event_to_dict(event, verdict), separators=(",", ":"))
