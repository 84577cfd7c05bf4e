"""MySQL rows as SQL literals, made in the examining workers: the escaping of
mysql_real_escape_string, and its inverse for the spool and db-rejected."""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from ..event import Message
from ..speedups import C
from .rows import MysqlText, Row, message_row


def event_text(row: tuple, messages: list[Message]) -> MysqlText:
    """The literals of an events row and its messages' rows (each Message's made once)."""
    return MysqlText(_tuple_literal(row), tuple(_message_literal(m) for m in messages))


def _message_literal(message: Message) -> str:
    text = message.renderings.get("mysql")
    if text is None:
        text = message.renderings["mysql"] = _tuple_literal(message_row(message))
    return text  # type: ignore[return-value]


# -- MySQL literals -------------------------------------------------------------------------------
# The escaping of mysql_real_escape_string, valid because Database.connect() makes the
# session's character set utf8mb4 and its sql_mode free of NO_BACKSLASH_ESCAPES (and each
# statement checks the latter is still so). In UTF-8 no multi-byte character contains a
# byte below 0x80, so escaping characters is escaping the bytes the server reads.
_NEEDS_ESCAPE = re.compile(r'[\x00\n\r\x1a\\\'"]')


def _escaped(text: str) -> str:
    # chained str.replace is ~10x faster than str.translate with a dict; backslash first
    return (text.replace("\\", "\\\\").replace("\0", "\\0").replace("\n", "\\n")
            .replace("\r", "\\r").replace("\x1a", "\\Z").replace("'", "\\'")
            .replace('"', '\\"'))


def sql_literal(value: str | bytes | int | None) -> str:
    """A MySQL literal for a row value: bytes as a hex literal (any byte, no escaping
    involved), text quoted and escaped, integers in decimal, None as NULL."""
    kind = type(value)
    if kind is bytes:
        return "X'" + value.hex() + "'"  # type: ignore[union-attr]
    if kind is str:
        return "'" + _escaped(value) + "'"  # type: ignore[arg-type]
    if value is None:
        return "NULL"
    if kind is bool:
        return "1" if value else "0"
    if kind is int:
        return str(value)
    raise TypeError(f"no MySQL literal for a {kind.__name__} value")


def values_text_py(values: Iterable) -> str:
    """``",".join(sql_literal(v) for v in values)``, the types inline rather than a call
    each: ~80 values an entry, where a call each was a fifth of the time. (The C twin,
    used when the extension is built, takes a tenth of this one's.)"""
    out: list[str] = []
    add = out.append
    search = _NEEDS_ESCAPE.search
    for value in values:
        kind = type(value)
        if kind is bytes:
            add("X'" + value.hex() + "'")
        elif kind is str:
            add("'" + (value if search(value) is None else _escaped(value)) + "'")
        elif value is None:
            add("NULL")
        elif kind is int:
            add(str(value))
        else:
            add(sql_literal(value))
    return ",".join(out)


values_text = C.values_text if C else values_text_py


def with_mysql_text(row: Row) -> Row:
    """The row with its MySQL literals (what a worker process does for the committer)."""
    if row.mysql is not None:
        return row
    messages = tuple(_tuple_literal(m[1:]) for m in row.matches)
    return Row(row.unique_id, row.event, row.matches, MysqlText(_tuple_literal(row.event),
                                                                messages))


def _tuple_literal(values: tuple) -> str:
    """A row as a MySQL ``(...)`` tuple literal."""
    return "(" + values_text(values) + ")"


def without_values(row: Row) -> Row:
    """The row as a worker sends it when it carries its literals (see ``Row``)."""
    if row.mysql is None or row.event is None:
        return row
    return Row(row.unique_id, None, [m[:2] for m in row.matches], row.mysql)


def full_row(row: Row) -> Row:
    """The row with its values, read back from its literals when it came without them."""
    if row.event is not None or row.mysql is None:
        return row
    matches = [(seq, *_message_values(text))
               for (seq, _), text in zip(row.matches, row.mysql.messages, strict=True)]
    return Row(row.unique_id, _tuple_values(row.mysql.event), matches, row.mysql)


def _tuple_values(text: str) -> tuple:
    """The values a ``_tuple_literal`` was made from (its inverse)."""
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError(f"not a tuple literal: {text[:20]!r}")
    return values_from_text(text[1:-1])


# A message's literal recurs in many rows (in a flood most of a batch's are repeats), but
# its data may be large: only short ones are kept, ~8 MB at most.
_short_message_values = functools.lru_cache(maxsize=1024)(_tuple_values)


def _message_values(text: str) -> tuple:
    return _tuple_values(text) if len(text) > 4096 else _short_message_values(text)


# What values_text writes: NULL, an integer, a hex literal, or a quoted string whose
# backslash escapes are the seven of _escaped; each followed by a comma or the end.
# (possessive: re would otherwise keep ~190 bytes of backtracking state per character)
_LITERAL = re.compile(r"(?:NULL|(-?[0-9]+)|X'([0-9a-f]*)'|'((?:[^\\']++|\\.)*+)')(?:,|\Z)",
                      re.S)
_UNESCAPED = {"\\": "\\", "0": "\0", "n": "\n", "r": "\r", "Z": "\x1a", "'": "'", '"': '"'}
_ESCAPE = re.compile(r"\\(.)", re.S)


def _unescaped(escape: re.Match) -> str:
    try:
        return _UNESCAPED[escape.group(1)]
    except KeyError:
        raise ValueError(f"not an escape values_text writes: {escape.group()!r}") from None


def values_from_text(text: str) -> tuple:
    """The values ``values_text`` made ``text`` from (its inverse)."""
    values: list = []
    at = 0
    for found in _LITERAL.finditer(text):
        if found.start() != at:
            break
        number, hexed, quoted = found.groups()  # all None: NULL
        if quoted is not None:
            values.append(_ESCAPE.sub(_unescaped, quoted) if "\\" in quoted else quoted)
        elif hexed is not None:
            values.append(bytes.fromhex(hexed))
        elif number is not None:
            values.append(int(number))
        else:
            values.append(None)
        at = found.end()
    if at != len(text) or text.endswith(","):
        raise ValueError(f"not literals written by values_text at {at}: {text[at:at + 20]!r}")
    return tuple(values)
