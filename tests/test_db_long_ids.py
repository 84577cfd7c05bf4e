"""Two entries whose unique ids the ``events.unique_id`` column (64 characters) cannot tell
apart as they are, because they share their first 64 characters or differ only in bytes
that are not text, are two rows: neither is skipped as "already stored". An id that fits
is stored as it is; ``show`` finds an entry by the id it was logged with."""
from __future__ import annotations

import pytest

from modsec_tools.audit.entry import parse_entry
from modsec_tools.db import open_database, parse_target
from modsec_tools.db.rows import event_row, stored_unique_id
from modsec_tools.report.show import stored_events
from tests import corpus
from tests.ingest_helpers import tree_files_from_tar
from tests.test_report_data import database_url

LONG = "A" * 64
IDS = [LONG + "first", LONG + "second",                       # the same first 64
       "bad\udc80id", "bad\udc81id",                          # invalid bytes, as parsed
       "aWrYsggx7z821rWArgDktAAAABQ"]                         # mod_unique_id's kind


@pytest.fixture(params=["sqlite", "mariadb"])
def db(request, tmp_path):
    with database_url(request, tmp_path) as url:
        database = open_database(parse_target(url))
        yield database
        database.close()


def _rows(ids: list[str]):
    corpus.require_corpus()
    data = next(iter(tree_files_from_tar("r1_relevant_concurrent").values()))
    rows = []
    for unique_id in ids:
        event = parse_entry(data, "test")
        event.unique_id = unique_id
        rows.append(event_row(event, "web1", "blocked"))
    return rows


def test_ids_the_column_cannot_hold_as_they_are_stay_apart(db):
    assert db.insert("web1", _rows(IDS)) == len(IDS)
    assert db.insert("web1", _rows(IDS)) == 0          # a replay: each is stored already
    assert db.count("events") == len(IDS)
    db._cursor()
    for unique_id in IDS:
        found = stored_events(db, unique_id)   # as logged
        assert len(found) == 1, unique_id
        assert len(found[0].get("unique_id")) <= 64
    assert stored_unique_id(IDS[-1]) == IDS[-1]


def test_stored_keys():
    keys = [stored_unique_id(i) for i in IDS]
    assert len(set(keys)) == len(IDS) and all(len(k) <= 64 for k in keys)
    assert keys[0].startswith("A" * 40) and keys[0] == stored_unique_id(IDS[0])
