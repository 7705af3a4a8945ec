"""What a request may be, checked before any work is done for it: the body's size (read no
further than the cap, chunked uploads included), its JSON (nesting, integers, lone
surrogates), and the number of messages. Each refusal is an `ApiError` (413 for the size, 400
naming the field for the rest); a client that goes away while sending is a 499 (logged as
one line, not as a server error).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from starlette.requests import ClientDisconnect, Request

from .protocol import ApiError, invalid

BYTES_PER_TOKEN = 16  # the default body cap: the context's tokens times this
MIN_REQUEST_BYTES = 10**6
MAX_MESSAGES = 10_000  # messages (or Responses input items) in one request
MAX_INT_DIGITS = 100  # longer integers are read as floats (inf): field checks refuse them
MAX_DEPTH = 64  # arrays and objects within each other (JSON schemas of tools need ~10)

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_DEEP = re.compile(r"(?:[\[{]\s*){64}")
_KEY = re.compile(r'"([^"\\]{1,100})"\s*:')


def default_max_request_bytes(context: int) -> int:
    """A body that could hold a full context of text in JSON, tools and all."""
    return max(MIN_REQUEST_BYTES, context * BYTES_PER_TOKEN)


def too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {max_bytes / 1e6:g} MB (the server's "
                         "--max-request-mb)", code="request_too_large")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over `max_bytes`: from its
    Content-Length before reading it, else (chunked) once the bytes read pass the cap."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise too_large(max_bytes)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(499, "the client went away while sending its request",
                       code="client_disconnected") from None
    return b"".join(chunks)


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 (`invalid_json`) for anything else."""
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_int=_integer)
    except RecursionError:
        found = _DEEP.search(text)
        keys = _KEY.findall(text, 0, found.start()) if found else []
        raise ApiError(400, "the request body nests arrays or objects too deeply",
                       param=keys[-1] if keys else None, code="invalid_json") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ApiError(400, f"the request body is not valid JSON: {error}",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    if text.count("[") + text.count("{") > MAX_DEPTH:  # else it cannot be too deep
        deep = _too_deep(body)
        if deep is not None:  # later code (harmony's JSON of tools, replies) would recurse
            raise invalid(deep, f"{deep} nests arrays or objects more than {MAX_DEPTH} deep")
    if _SURROGATE_ESCAPE.search(text):  # rare: then find the field (pairs are fine)
        where = _lone_surrogate(body)
        if where is not None:
            raise invalid(where, f"{where} holds a lone surrogate (\\ud800-\\udfff), which is "
                                 "not a character")
    return body


def _too_deep(body: dict) -> str | None:
    """The top-level field whose arrays or objects nest deeper than MAX_DEPTH."""
    for key, value in body.items():
        stack = [(value, 2)] if isinstance(value, (dict, list)) else []
        while stack:
            container, depth = stack.pop()
            if depth > MAX_DEPTH:
                return key
            items = container.values() if isinstance(container, dict) else container
            stack.extend((item, depth + 1) for item in items if isinstance(item, (dict, list)))
    return None


def _integer(digits: str) -> int | float:
    return int(digits) if len(digits) <= MAX_INT_DIGITS else float(digits)


def _lone_surrogate(body: dict) -> str | None:
    """The path of the first string holding a lone surrogate (of the object, for a key)."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path or None
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                if _SURROGATE.search(key):
                    return path or None  # the key itself cannot be named in the reply
                stack.append((item, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(value))))
    return None


def check_message_count(body: Mapping, field: str) -> None:
    items = body.get(field)
    if isinstance(items, list) and len(items) > MAX_MESSAGES:
        raise invalid(field, f"{field} has {len(items)} items; at most {MAX_MESSAGES} are "
                             "accepted")
