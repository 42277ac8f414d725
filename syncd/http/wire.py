"""The HTTP/1.1 wire under syncd: uvicorn's httptools protocol, two habits changed.

1. **Raw UTF-8 in the request target is accepted.** Whether GetCourse URL-encodes the
   values it substitutes into a process URL is not documented (getcourse.md, "Added
   2026-12-02"); a raw Cyrillic name (or a space in it) made llhttp refuse the whole
   request before syncd saw it. Before the parser sees a request line, every byte of its
   target outside printable ASCII (``0x80``–``0xFF``, spaces, controls) is percent-encoded,
   so the query string decodes as the UTF-8 it was. A target that is not valid UTF-8 is
   refused. Only the first request line of each read is rewritten: a client that
   pipelines requests with raw bytes gets the 400 below for the later ones.
2. **Every request the parser refuses is answered in JSON** (``{"success": false,
   "error": "invalid_request", "detail": …}``), like every answer of the application,
   instead of uvicorn's ``text/plain`` «Invalid HTTP request received.».

Pass ``uvicorn.Config(http=Utf8HttpProtocol)``, or :func:`with_utf8_targets` of another
subclass of uvicorn's httptools protocol (``syncd run`` wraps its guarded one).
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

#: A request line longer than this is left to the parser as it is (it refuses it).
MAX_REQUEST_LINE = 64 * 1024
_PLAIN = frozenset(range(0x21, 0x7F))  # printable ASCII but space


def _escaped(byte: int) -> bytes:
    return b"%%%02X" % byte if byte not in _PLAIN else bytes((byte,))


_ESCAPE = [_escaped(b) for b in range(256)]


class BadTarget(ValueError):
    """The request target is not UTF-8."""


def rewrite_request_line(line: bytes) -> bytes:
    """``GET /x?n=Иван Петров HTTP/1.1`` → ``GET /x?n=%D0%98…%20%D0%9F… HTTP/1.1``.

    ``line`` is the request line without its line end; returned unchanged when its target
    has nothing to escape or it does not look like ``METHOD TARGET HTTP/x.y``.
    """
    method, space, rest = line.partition(b" ")
    target, space2, version = rest.rpartition(b" ")
    if not space or not space2 or not version.startswith(b"HTTP/") or not target:
        return line
    if all(byte in _PLAIN for byte in target):
        return line
    try:
        target.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget from None
    return method + b" " + b"".join(_ESCAPE[byte] for byte in target) + b" " + version


class Utf8HttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._line_pending = True  # the next bytes start a request line
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        if not self._line_pending:
            super().data_received(data)
            return
        data = self._buffer + data
        end = data.find(b"\n")
        if end < 0 and len(data) <= MAX_REQUEST_LINE:
            self._buffer = data  # wait for the rest of the request line
            return
        self._buffer = b""
        self._line_pending = False
        if end >= 0:
            line_end = end - 1 if end > 0 and data[end - 1] == 0x0D else end
            try:
                line = rewrite_request_line(data[:line_end])
            except BadTarget:
                self.send_400_response("The request target is not UTF-8.")
                return
            data = line + data[line_end:]
        super().data_received(data)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._line_pending = True

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(
            {"success": False, "error": "invalid_request", "detail": msg}, ensure_ascii=False
        ).encode()
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()


def with_utf8_targets(protocol: type[HttpToolsProtocol]) -> type[HttpToolsProtocol]:
    """``protocol`` (a subclass of uvicorn's httptools protocol) with both habits above.

    ``protocol``'s own overrides run first and reach these through ``super()``.
    """
    if issubclass(protocol, Utf8HttpProtocol):
        return protocol
    return type(protocol.__name__, (protocol, Utf8HttpProtocol), {})
