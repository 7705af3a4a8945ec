"""`openharmony serve`: an OpenAI-compatible HTTP server (Responses API and Chat Completions).

    protocol.py  JSON requests -> harmony conversations and options; turns -> JSON responses
    engine.py    the generation thread, its bounded queue and the pool of prompt caches
    app.py       the endpoints (Starlette/FastAPI on uvicorn), errors, auth, logging

Imports go one way: app -> protocol, engine -> openharmony's chat and generation.
"""
