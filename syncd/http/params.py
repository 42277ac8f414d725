"""Reading request parameters: query string plus a JSON or form body, size-limited.

Salebot sends JSON or form bodies (values as strings by default); GetCourse processes
send query strings, forms or JSON. All become one flat ``dict`` of names to values; the
body wins over the query string; ``token`` never reaches the data.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.requests import Request

from syncd.errors import InvalidInput

MAX_FIELDS = 200


class BodyTooLarge(Exception):
    """The body is over ``http.max_body_bytes``."""


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("invalid_body", "Content-Length is not a number")
        if int(declared) > limit:
            raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


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
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidInput("invalid_body", f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidInput("invalid_body", "the JSON body must be an object")
        return data
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError as exc:
        raise InvalidInput("invalid_body", f"the form body is not valid: {exc}") from None
    return dict(pairs)


async def read_params(request: Request, limit: int) -> dict[str, object]:
    """Query string and body merged (body wins), without the ``token``."""
    body = await read_body(request, limit)
    params: dict[str, object] = dict(request.query_params)
    params.update(parse_body(body, request.headers.get("content-type", "")))
    params.pop("token", None)
    return params
