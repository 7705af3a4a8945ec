"""`openharmony serve`: an OpenAI-compatible HTTP server (Responses API and Chat Completions).

    protocol.py          what both APIs share: errors, field checks, tools, TurnRequest, Usage
    responses.py         the Responses API: JSON -> conversation, events -> items and SSE events
    chat_completions.py  Chat Completions: JSON -> conversation, events -> message and chunks
    engine.py            the generation thread, its bounded queue and the pool of prompt caches
    app.py               the endpoints (Starlette on uvicorn), errors, API key, request log

Imports go one way: app -> responses, chat_completions -> protocol; app -> engine; all of them
-> openharmony's chat (ChatTurn, Chat) and sampling.
"""
