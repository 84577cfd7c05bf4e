"""AppendFile.append: bytes, or a batch's pieces written in order with writev, whatever the
kernel's partial writes and its limit on pieces per call."""
from __future__ import annotations

import os
import random

from modsec_tools import appendfile
from modsec_tools.appendfile import AppendFile


def test_pieces_land_in_order_through_partial_writes(tmp_path, monkeypatch):
    rng = random.Random(5)
    pieces = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
              for _ in range(3000)]  # more pieces than one writev takes, some empty
    real_writev = os.writev
    calls = []

    def short_writev(fd, buffers):
        calls.append(len(buffers))
        assert len(buffers) <= appendfile._IOV_MAX
        # the kernel may write less than asked: here at most 1,000 bytes, cut mid-piece
        budget, taken = rng.randrange(1, 1000), []
        for buffer in buffers:
            if budget <= 0:
                break
            taken.append(bytes(buffer[:budget]))
            budget -= len(buffer)
        return real_writev(fd, taken)
    monkeypatch.setattr(appendfile.os, "writev", short_writev)
    monkeypatch.setattr(appendfile, "_IOV_MAX", 64)
    out = AppendFile(str(tmp_path / "archive.log"))
    out.append(b"head\n")
    out.append(pieces)
    out.append(b"")
    out.append([])
    out.close()
    assert (tmp_path / "archive.log").read_bytes() == b"head\n" + b"".join(pieces)
    assert len(calls) > 3000 // 64
