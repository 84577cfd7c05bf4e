"""fail2ban's control socket, spoken directly (what ``fail2ban-client`` does, minus the
start-up of a Python interpreter per command: a ban reaches fail2ban in a millisecond).

The protocol (fail2ban/client/csocket.py, the same from 0.9 to 1.1): a pickled list of
strings, then ``<F2B_END_COMMAND>``; the answer is a pickled ``[code, result]`` ended the
same way. Answers are unpickled with only plain builtins allowed: even a root-owned socket's
answer never gets to name a class to construct.
"""
from __future__ import annotations

import builtins
import io
import pickle
import socket
from typing import Any

END = b"<F2B_END_COMMAND>"
CLOSE = b"<F2B_CLOSE_COMMAND>"
DEFAULT_SOCKET = "/var/run/fail2ban/fail2ban.sock"

_PLAIN = {"str", "int", "float", "bool", "list", "tuple", "dict", "set", "frozenset",
          "bytes", "NoneType", "complex"}


class Fail2BanError(RuntimeError):
    """fail2ban refused a command (unknown jail, bad argument); the text is its answer."""


class RemoteError(Exception):
    """An exception fail2ban answered with, by name only (its class is never imported)."""

    def __init__(self, name: str, *args: object) -> None:
        super().__init__(*args)
        self.name = name

    def __str__(self) -> str:
        return f"{self.name}: {' '.join(map(str, self.args))}"


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # fail2ban answers with builtins (IPAddr pickles itself as str), and with an
        # exception when a command fails (builtin, or its own such as UnknownJailException).
        if module == "builtins":
            value = getattr(builtins, name, None)
            if name in _PLAIN or (isinstance(value, type) and issubclass(value, Exception)):
                return value
        if module.startswith("fail2ban.") and name.endswith(("Exception", "Error")):
            return lambda *args: RemoteError(name, *args)
        raise pickle.UnpicklingError(f"fail2ban answered with {module}.{name}: refused")


class Fail2BanSocket:
    """One connection, reopened after fail2ban restarts; not thread-safe."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def send(self, *command: str) -> Any:
        """Run one command; its result, or Fail2BanError. OSError: fail2ban is not there."""
        if self.sock is None:
            self._connect()
        assert self.sock is not None
        try:
            self.sock.sendall(pickle.dumps([str(part) for part in command],
                                           pickle.HIGHEST_PROTOCOL) + END)
            answer = self._receive()
        except (OSError, pickle.UnpicklingError, EOFError):
            self.close()
            raise
        if not isinstance(answer, (list, tuple)) or len(answer) != 2:
            raise Fail2BanError(f"unexpected answer {answer!r}")
        code, result = answer
        if code != 0:
            raise Fail2BanError(f"{' '.join(command[:3])}: {result}")
        return result

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def _receive(self) -> Any:
        assert self.sock is not None
        data = bytearray()
        while not data.endswith(END):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("fail2ban closed the connection")
            data += chunk
        return _Unpickler(io.BytesIO(bytes(data[:-len(END)]))).load()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.sendall(CLOSE + END)
            except OSError:
                pass
            self.sock.close()
            self.sock = None
