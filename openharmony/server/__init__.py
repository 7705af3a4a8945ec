"""`openharmony serve`: an OpenAI-compatible HTTP server (Responses API and Chat Completions).

    protocol.py          what both APIs share: errors, field checks, tools, TurnRequest, Usage
    responses.py         the Responses API: JSON -> conversation, events -> items and SSE events
    chat_completions.py  Chat Completions: JSON -> conversation, events -> message and chunks
    engine.py            the generation thread, its exact admission and the pool of prompt caches
    limits.py            what a request may be: body size, JSON, message count (before any work)
    render.py            prompts rendered and tokenized in worker processes, words capped
    app.py               the endpoints (Starlette), errors, API key, request log
    run.py               uvicorn as `openharmony serve` runs it: socket, timeouts, signals

Imports go one way: run -> app -> responses, chat_completions -> protocol; app -> engine,
limits, render; all of them -> openharmony's chat (ChatTurn, Chat) and sampling.
"""
