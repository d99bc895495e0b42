"""The HTTP API per endpoint group, as vLLM's OpenAI server splits it: each module has the object that serves its
group (a `Serving` holding the settings, the engine and the toolkits) and the router over it; umi.serve.app mounts
them and installs the error handlers.

    agent    POST /agent, POST /agent/stream, GET /agent/toolkits
    chat     POST /v1/chat/completions (OpenAI-compatible)
    models   GET /health, GET /v1/models, GET /v1/models/{model_id}
    common   the OpenAI-shaped ApiError, the Serving base, worker-thread helpers
"""
