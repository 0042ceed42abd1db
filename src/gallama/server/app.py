"""A worker's FastAPI application: the API routes over its models, and its /metrics."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gallama import __version__
from gallama.serving.registry import ModelRegistry
from gallama.server.error_handlers import install_error_handlers
from gallama.server.responses_store import ResponsesStore
from gallama.server.routes import chat, completions, embeddings, messages, models, responses


def create_app(registry: ModelRegistry, responses_store: ResponsesStore | None = None) -> FastAPI:
    app = FastAPI(title="gallama", version=__version__)
    app.state.registry = registry
    app.state.responses_store = responses_store  # None: a temporary one, made on first use
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(messages.router)
    app.include_router(completions.router)
    app.include_router(models.router)
    app.include_router(embeddings.router)
    app.include_router(responses.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        # One model per worker: its families, unlabelled; the front adds model and instance labels.
        text = b"".join(generate_latest(m.metrics.registry) for m in registry.all() if hasattr(m, "metrics"))
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return app
