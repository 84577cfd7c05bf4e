"""Typed errors: every failure to read an entry says why, so it can be logged and quarantined."""


class ParseError(ValueError):
    """An entry that cannot be turned into an Event; the message is the reason."""


class IntegrityError(ParseError):
    """An entry whose bytes do not match what the index log recorded (size or md5)."""
