"""The HTTP endpoints, on Starlette (served by uvicorn).

    GET  /health                 {"status": "ok"}
    GET  /v1/models              the loaded model
    POST /v1/responses           the Responses API (Codex CLI), streaming (SSE) and not
    GET  /v1/responses/{id}      a stored response
    POST /v1/chat/completions    Chat Completions, streaming and not

Errors are OpenAI's error object with the HTTP status (400 bad field or JSON, 401 key, 404
model or path, 413 body over the cap, 429 full, 503 shutting down, 500 a bug: logged once,
never a traceback in the response). What a request may be is checked before any work
(limits.py); prompts are rendered in worker processes (render.py). One log line per request:
method, path, status, prompt / cached / generated tokens, seconds (499: the client went away).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import OpenHarmonyError
from ..memory import PromptMemoryError, check_prompt_fits  # issue 20's memory guard
from .engine import Engine, QueueFull, ShuttingDown
from .chat_completions import ChatCompletionBuilder, chat_request, chat_sse
from .limits import check_message_count, default_max_request_bytes, parse_json, read_body
from .protocol import ApiError, TurnRequest, Usage, invalid
from .render import RENDER_WORKERS, Renderer
from .responses import ResponseBuilder, responses_request, sse

log = logging.getLogger("openharmony.server")
RETRY_AFTER_SECONDS = 5
DISCONNECT_CHECK_SECONDS = 0.25  # how often a non-streaming request looks for its client


class ResponseStore:
    """The conversations of recent responses, for `previous_response_id` (bounded, LRU)."""

    def __init__(self, max_responses: int):
        self.max_responses = max_responses
        self._items: OrderedDict[str, tuple[dict, list]] = OrderedDict()

    def put(self, response: dict, history: list) -> None:
        self._items[response["id"]] = (response, history)
        while len(self._items) > self.max_responses:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> tuple[dict, list] | None:
        found = self._items.get(response_id)
        if found is not None:
            self._items.move_to_end(response_id)
        return found


def create_app(model, tokenizer, model_id: str, *, api_key: str | None = None,
               max_queue: int = 16, max_cache_bytes: int = 4 * 10**9,
               max_stored_responses: int = 256, kv_bits: int | None = None,
               max_batch: int = 8, max_request_bytes: int | None = None,
               render_workers: int = RENDER_WORKERS) -> RequestLog:
    """The ASGI app serving `model`; its generation thread and render workers start and stop
    with the app. `max_request_bytes`: the body cap (default: sized to the context).
    The returned app's `shut_down()` ends every turn now (SIGTERM; run.py)."""
    context = model.config.max_position_embeddings
    if max_request_bytes is None:
        max_request_bytes = default_max_request_bytes(context)
    store = ResponseStore(max_stored_responses)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app):
        state["engine"] = app.state.engine = Engine(model, tokenizer, max_queue=max_queue,
                                                    max_cache_bytes=max_cache_bytes,
                                                    kv_bits=kv_bits, max_batch=max_batch)
        state["renderer"] = Renderer(tokenizer, render_workers)
        state["renderer"].start()
        try:
            yield
        finally:
            await asyncio.to_thread(state["engine"].close)
            await asyncio.to_thread(state["renderer"].close)
            log.info("stopped: the generation thread has ended")

    def shut_down() -> None:
        if "engine" in state:
            state["engine"].shut_down()

    def check_model(body: dict) -> None:
        name = body.get("model")
        if name is not None and not isinstance(name, str):
            raise invalid("model", f"model must be a string, got {type(name).__name__}")
        if name is not None and name != model_id:
            raise ApiError(404, f"the model {name!r} does not exist: this server has "
                           f"{model_id!r}", param="model", code="model_not_found")

    async def read_json(request: Request, messages: str) -> dict:
        """The request's JSON object, within the limits (limits.py)."""
        body = parse_json(await read_body(request, max_request_bytes))
        check_model(body)
        check_message_count(body, messages)
        return body

    def rate_limited() -> ApiError:
        return ApiError(429, "too many requests are running or waiting; retry later",
                        type="rate_limit_error", code="rate_limit_exceeded",
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    async def submit(request: Request, turn: TurnRequest):
        """Render the prompt (in a worker) and queue the turn: 400 when it cannot be rendered
        or fit in the context, 429 when the batch and the queue are full."""
        engine = state["engine"]
        if engine.full():  # refused before the work of rendering
            raise rate_limited()
        param = "messages" if request.url.path.endswith("completions") else "input"
        try:
            prompt = await state["renderer"].render(turn.chat)
        except ValueError as error:
            raise ApiError(400, str(error), param=param, code="invalid_prompt") from None
        room = context - len(prompt)
        max_tokens = turn.max_tokens if turn.max_tokens is not None else room
        if max_tokens > room or room < 1:
            raise ApiError(400, f"the prompt ({len(prompt)} tokens) plus the tokens to generate "
                           f"({max_tokens}) exceed the model's context of {context} tokens",
                           param=param, code="context_length_exceeded")
        # Issue 20's memory guard: 400 before queueing a prompt whose KV cache cannot fit.
        try:
            check_prompt_fits(model, len(prompt), cache_options={"kv_bits": kv_bits})
        except PromptMemoryError as error:
            raise ApiError(400, str(error), code="insufficient_memory") from None
        try:
            return engine.submit(prompt, asyncio.get_running_loop(),
                                 **turn.turn_options(max_tokens))
        except QueueFull:
            raise rate_limited() from None
        except ShuttingDown as error:
            raise failed(error) from None

    async def events_of(request: Request, job, stream: bool) -> AsyncIterator[tuple[str, Any]]:
        """The job's events; stops its generation when the client goes away (a closed stream,
        or for a non-streaming request, a disconnect noticed while waiting)."""
        next_check = time.monotonic() + DISCONNECT_CHECK_SECONDS
        try:
            while True:
                if stream:  # Starlette cancels a stream whose client went away
                    item = await job.events.get()
                else:
                    try:
                        item = await asyncio.wait_for(job.events.get(),
                                                      timeout=DISCONNECT_CHECK_SECONDS)
                    except asyncio.TimeoutError:
                        item = None
                    if time.monotonic() >= next_check:
                        if await request.is_disconnected():
                            return
                        next_check = time.monotonic() + DISCONNECT_CHECK_SECONDS
                    if item is None:
                        continue
                yield item
                if item[0] != "event":
                    return
        finally:
            state["engine"].cancel(job)  # no-op after the end; stops a generation still running

    def failure(error) -> tuple[str, str]:
        if isinstance(error, ShuttingDown):
            sent = len(error.turn.tokens) if error.turn is not None else 0
            return "server_shutting_down", (f"the server is shutting down: the reply was cut "
                                            f"after {sent} tokens")
        if isinstance(error, OpenHarmonyError):
            return "invalid_prompt", " ".join(str(error).split())
        return "server_error", "the generation failed (see the server's log)"

    def failed(error) -> ApiError:
        """The error response of a non-streaming request whose generation failed."""
        code, message = failure(error)
        if code == "server_shutting_down":
            return ApiError(503, message, type="server_error", code=code)
        if code == "server_error":
            return ApiError(500, message, type="server_error", code=code)
        return ApiError(400, message, code=code)

    def count_failed(request: Request, error, reasoning_tokens: int) -> None:
        """The request log counts the tokens of a turn cut by shutdown."""
        if getattr(error, "turn", None) is not None:
            request.state.usage = Usage.of(error.turn, reasoning_tokens)

    # -- endpoints --------------------------------------------------------------------------

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "openharmony",
                "context_length": context}

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def one_model(request: Request) -> Response:
        check_model({"model": request.path_params["name"]})
        return JSONResponse(model_card())

    async def responses(request: Request) -> Response:
        body = await read_json(request, "input")
        previous = None
        previous_id = body.get("previous_response_id")
        if previous_id is not None:
            if not isinstance(previous_id, str):
                raise invalid("previous_response_id", "previous_response_id must be a string")
            found = store.get(previous_id)
            if found is None:
                raise ApiError(404, f"no stored response has the id {previous_id!r}",
                               param="previous_response_id", code="previous_response_not_found")
            previous = found[1]
        turn = await asyncio.to_thread(responses_request, body, tokenizer, previous)
        builder = ResponseBuilder(turn, body, model_id)

        def remember() -> None:
            if body.get("store", True) is not False and builder.status != "failed":
                store.put(builder.response(), builder.history())

        if not turn.stream:
            job = await submit(request, turn)
            async for kind, value in events_of(request, job, stream=False):
                if kind == "event":
                    builder.feed(value)
                elif kind == "done":
                    builder.finish(value)
                    request.state.usage = builder.usage
                else:
                    count_failed(request, value, builder.reasoning_tokens)
                    raise failed(value)
            if builder.status == "in_progress":
                return Response(status_code=499)  # the client went away: nothing to keep
            remember()
            return JSONResponse(builder.response())

        try:
            job = await submit(request, turn)
        except ApiError as error:
            if error.code != "context_length_exceeded":
                raise
            # A stream reports that generation cannot run as response.failed.
            events = builder.start() + builder.fail(error.code, error.message)
            return sse_response(iter_async(sse(e) for e in events))

        async def stream() -> AsyncIterator[str]:
            for event in builder.start():
                yield sse(event)
            async for kind, value in events_of(request, job, stream=True):
                if kind == "event":
                    events = builder.feed(value)
                elif kind == "done":
                    events = builder.finish(value)
                    request.state.usage = builder.usage
                    remember()
                else:
                    count_failed(request, value, builder.reasoning_tokens)
                    events = builder.fail(*failure(value))
                for event in events:
                    yield sse(event)

        return sse_response(stream())

    async def get_response(request: Request) -> Response:
        found = store.get(request.path_params["id"])
        if found is None:
            raise ApiError(404, f"no stored response has the id {request.path_params['id']!r}",
                           code="not_found")
        return JSONResponse(found[0])

    async def chat_completions(request: Request) -> Response:
        body = await read_json(request, "messages")
        turn = await asyncio.to_thread(chat_request, body, tokenizer)
        builder = ChatCompletionBuilder(turn, model_id, tokenizer)
        job = await submit(request, turn)
        if not turn.stream:
            async for kind, value in events_of(request, job, stream=False):
                if kind == "event":
                    builder.feed(value)
                elif kind == "done":
                    request.state.usage = Usage.of(value, builder.reasoning_tokens)
                    return JSONResponse(builder.completion(value))
                else:
                    count_failed(request, value, builder.reasoning_tokens)
                    raise failed(value)
            return Response(status_code=499)  # the client went away

        async def stream() -> AsyncIterator[str]:
            for chunk in builder.start():
                yield chat_sse(chunk)
            async for kind, value in events_of(request, job, stream=True):
                if kind == "event":
                    chunks = builder.feed(value)
                elif kind == "done":
                    request.state.usage = Usage.of(value, builder.reasoning_tokens)
                    chunks = builder.finish(value)
                else:
                    count_failed(request, value, builder.reasoning_tokens)
                    code, message = failure(value)
                    chunks = [{"error": {"message": message, "type": "server_error",
                                         "param": None, "code": code}}]
                for chunk in chunks:
                    yield chat_sse(chunk)
            yield "data: [DONE]\n\n"

        return sse_response(stream())

    # -- errors ---------------------------------------------------------------------------

    async def api_error(request: Request, error: ApiError) -> Response:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def http_error(request: Request, error: HTTPException) -> Response:
        message = (f"no such endpoint: {request.method} {request.url.path}"
                   if error.status_code in (404, 405) else str(error.detail))
        return JSONResponse(ApiError(error.status_code, message).body(),
                            status_code=error.status_code)

    async def bug(request: Request, error: Exception) -> Response:
        return internal_error()  # Starlette raises it on: RequestLog logs it, once

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", one_model, methods=["GET"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/responses/{id}", get_response, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error,
                                        Exception: bug})
    served = RequestLog(ApiKey(app, api_key))
    served.state, served.shut_down = app.state, shut_down
    return served


def internal_error() -> JSONResponse:
    return JSONResponse(ApiError(500, "internal server error (see the server's log)",
                                 type="server_error").body(), status_code=500)


def sse_response(body) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def iter_async(items) -> AsyncIterator:
    for item in items:
        yield item


class ApiKey:
    """ASGI middleware: with a key, every request but /health needs `Authorization: Bearer KEY`."""

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if self.api_key is None or scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(),
                                                               self.api_key.encode()):
            return await self.app(scope, receive, send)  # the scheme's case is free (RFC 9110)
        error = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                         code="invalid_api_key")
        await JSONResponse(error.body(), status_code=401)(scope, receive, send)


class RequestLog:
    """ASGI middleware: one log line per request, when its response has been sent; a bug
    (an exception out of the app) is logged here, once, with its traceback, and answered
    500 if nothing was sent yet. Its `state` and `shut_down` are create_app's."""

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {}
        scope.setdefault("state", {})

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        except Exception:
            log.exception("request failed: %s %s", scope["method"], scope["path"])
            if "code" not in status:
                await internal_error()(scope, receive, logged_send)
        finally:
            usage = scope["state"].get("usage") or Usage()
            log.info("%s %s %s prompt=%d cached=%d generated=%d %.2fs", scope["method"],
                     scope["path"], status.get("code", "-"), usage.prompt_tokens,
                     usage.cached_tokens, usage.generated_tokens, time.perf_counter() - start)
