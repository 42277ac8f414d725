"""Reading request parameters: query string plus a JSON or form body, size-limited.

Salebot sends JSON or form bodies (values as strings by default); GetCourse processes
send query strings, forms or JSON. All become one flat ``dict`` of names to values; the
body wins over the query string; ``token`` never reaches the data.

Whatever is returned can be stored as is by SQLite and PostgreSQL alike: a name or value
holding a NUL character or a lone UTF-16 surrogate (``"\\udc00"``), JSON nested deeper
than :data:`MAX_DEPTH`, or a number JSON does not allow (``NaN``, ``1e400``) is
``invalid_body`` here, before any store sees it.
"""

from __future__ import annotations

import json
import math
import re
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

from syncd.errors import InvalidInput

MAX_FIELDS = 200
#: How deep JSON objects and arrays may nest (a webhook's data is one or two levels).
MAX_DEPTH = 32
#: A ``\uD800``–``\uDFFF`` escape: the only way a surrogate gets into decoded text
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


class BodyTooLarge(Exception):
    """The body is over ``http.max_body_bytes``."""


def header(request: Request, name: bytes) -> str | None:
    """The first ``name`` header (lower-case bytes), as Starlette's ``headers.get`` reads
    it, without building its ``Headers`` for each request."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def query(request: Request) -> dict[str, str]:
    """The query string as ``dict(request.query_params)`` reads it (the last of repeated
    names wins), parsed once per request and kept in its scope."""
    scope = request.scope
    found: dict[str, str] | None = scope.get(_QUERY)
    if found is None:
        found = scope[_QUERY] = dict(
            parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        )
    return found


_QUERY = "syncd.query"


async def read_body(request: Request, limit: int) -> bytes:
    declared = header(request, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("invalid_body", "Content-Length is not a number")
        if int(declared) > limit:
            raise BodyTooLarge
    # what Request.stream() does, without an async generator per request
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = body  # as Request.body() keeps it, for whatever reads it again
    return body


def parse_body(body: bytes, content_type: str) -> dict[str, object]:
    media = content_type.split(";", 1)[0].strip().lower()
    stripped = body.strip()
    if not stripped:
        return {}
    if media == "multipart/form-data":
        raise InvalidInput("invalid_body", "send JSON or application/x-www-form-urlencoded")
    is_json = media == "application/json" or media.endswith("+json")
    if not is_json and media != "application/x-www-form-urlencoded":
        is_json = stripped[:1] in (b"{", b"[")  # no or odd content type: sniff
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("invalid_body", "the body is not UTF-8") from None
    if is_json:
        try:
            if text.startswith("\ufeff"):  # as json.loads refuses it
                raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
            data = _DECODER.decode(text)
        except (ValueError, RecursionError) as exc:
            reason = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
            raise InvalidInput("invalid_body", f"the body is not valid JSON: {reason}") from None
        if not isinstance(data, dict):
            raise InvalidInput("invalid_body", "the JSON body must be an object")
        check_tree(data, surrogates=_SURROGATE_ESCAPE.search(text) is not None)
        return data
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError as exc:
        raise InvalidInput("invalid_body", f"the form body is not valid: {exc}") from None
    form = dict(pairs)
    check_flat(form)
    return dict[str, object](form)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


#: ``json.loads(text, parse_float=…, parse_constant=…)`` builds a decoder per call.
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)


def _bad_text(text: str, surrogates: bool) -> str | None:
    """Why ``text`` cannot be stored, or None."""
    if "\x00" in text:
        return "a NUL character"
    if surrogates:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "a lone UTF-16 surrogate (\\ud800-\\udfff)"
    return None


def _refuse(name: object, why: str) -> InvalidInput:
    shown = repr(name)[:40] if isinstance(name, str) and not _bad_text(name, True) else "a name"
    return InvalidInput("invalid_body", f"{shown} holds {why}")


def check_flat(params: dict[str, str]) -> None:
    """Form and query-string names and values: no NUL (their decoding leaves no surrogate)."""
    for name, value in params.items():
        if "\x00" in name or "\x00" in value:
            raise _refuse(name, "a NUL character")


def check_tree(data: dict[str, object], surrogates: bool) -> None:
    """Every name and string of a JSON body storable; nesting at most :data:`MAX_DEPTH`."""
    stack: list[tuple[dict[str, object] | list[object], int, str]] = [(data, 1, "the body")]
    while stack:
        node, depth, name = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput("invalid_body", f"the JSON body nests deeper than {MAX_DEPTH}")
        if isinstance(node, dict):
            for key in node:
                if why := _bad_text(key, surrogates):
                    raise _refuse(key, why)
            pairs = list(node.items())
        else:
            pairs = [(name, value) for value in node]
        for key, value in pairs:
            if isinstance(value, str):
                if why := _bad_text(value, surrogates):
                    raise _refuse(key, why)
            elif isinstance(value, dict | list):
                stack.append((value, depth + 1, key))


async def read_params(request: Request, limit: int) -> dict[str, object]:
    """Query string and body merged (body wins), without the ``token``."""
    body = await read_body(request, limit)
    found = query(request)
    check_flat(found)
    params: dict[str, object] = dict(found)
    params.update(parse_body(body, header(request, b"content-type") or ""))
    params.pop("token", None)
    return params
