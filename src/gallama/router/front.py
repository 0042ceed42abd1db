"""The front server: routes each request by its `model` to a worker, and adds and removes models."""

from __future__ import annotations

import asyncio
import json
import socket
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.routing import Route

from gallama import __version__
from gallama.config import ModelSpec, SpecError, load_config, resolve, spec_from_dict
from gallama.protocol.errors import APIError, InvalidRequest, ModelNotFound, ResponseNotFound
from gallama.protocol.requests import StrictModel
from gallama.router.handover import wants_handover
from gallama.router.local_instance import LocalInstance
from gallama.router.pool import ModelPool
from gallama.router.proxy import forward
from gallama.router.worker_metrics import scrape_workers
from gallama.server.error_handlers import install_error_handlers
from gallama.server.guard import MODEL_FALLBACK, Guard, GuardSettings, Metrics
from gallama.server.responses_store import ResponsesStore, input_items_page

ROUTED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize",
                "/v1/messages", "/v1/messages/count_tokens", "/v1/responses")
# The kind of model each routed path needs, for a request whose model is not served (the fallback).
PATH_KINDS = {"/v1/embeddings": "embedding"}
MAX_MODEL_NAME = 256  # a longer name is no model's; refused before it reaches the fallback and its log line


def _payload(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # the worker's validation answers these
        return None


def _model_of(payload: object) -> str | None:
    model = payload.get("model") if isinstance(payload, dict) else None
    return model if isinstance(model, str) else None


def group_specs(specs: list[ModelSpec]) -> dict[str, list[ModelSpec]]:
    """Resolved specs by model name: the same name given twice is two instances of it."""
    groups: dict[str, list[ModelSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.model_name, []).append(spec)
    return groups


class RemoveModelRequest(StrictModel):
    model: str


def create_front(
    pool: ModelPool,
    spec_defaults: dict[str, Any] | None = None,
    guard: GuardSettings | None = None,
    cors_origins: list[str] | None = None,
    responses_store: ResponsesStore | None = None,
) -> FastAPI:
    # TCP_NODELAY: httpx writes headers and body separately, and Nagle plus delayed ACKs would hold the body 40 ms.
    # Keepalive probes an idle connection after 10 s: a worker whose machine vanished without closing its
    # connections (a Ray node) fails its requests then, instead of holding them forever.
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=None), socket_options=[
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10), (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
    ])
    client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None, connect=5.0))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await client.aclose()

    app = FastAPI(title="gallama", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(Guard, settings=guard or GuardSettings(), metrics=Metrics(lambda: scrape_workers(client, pool)))
    if cors_origins:  # added last, so it runs first: preflight requests carry no key
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"])

    async def route(request: Request):
        body = await request.body()
        payload = _payload(body)
        model = _model_of(payload)
        if model is None:
            # No usable model field: any worker answers with the same validation error the model's own would.
            ready = [g for g in pool.groups.values() if g.pick() is not None]
            if not ready:
                raise InvalidRequest("Missing required parameter: 'model'.", param="model")
            instance = ready[0].pick()
        elif len(model) > MAX_MODEL_NAME:
            raise InvalidRequest(f"'model' is longer than {MAX_MODEL_NAME} characters.", param="model")
        else:
            instance = pool.route(model, PATH_KINDS.get(request.url.path, "llm"))
            if instance.spec.model_name != model:
                # The worker answers for its own name: the response's `model` says who answered.
                request.scope[MODEL_FALLBACK] = (model, instance.spec.model_name)
                body = json.dumps({**payload, "model": instance.spec.model_name}).encode()
        if isinstance(instance, LocalInstance):
            return instance.answer(body)
        return await forward(client, instance, request, body, handover=wants_handover(request, payload))

    # Plain Starlette routes: FastAPI's per-request dependency and validation machinery is pure overhead here.
    app.router.routes.extend(Route(path, route, methods=["POST"]) for path in ROUTED_PATHS)

    def openapi() -> dict:
        # The routed paths are plain routes here: their operations and request bodies are the workers' own.
        if app.openapi_schema is None:
            # The workers' routes load the whole chat core: the front imports them only when asked for this.
            from gallama.server.app import create_app
            from gallama.serving.registry import ModelRegistry

            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            worker = create_app(ModelRegistry()).openapi()
            schema["paths"].update({path: ops for path, ops in worker["paths"].items() if path in ROUTED_PATHS})
            schema.setdefault("components", {}).setdefault("schemas", {}).update(worker["components"]["schemas"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [group.card() for group in pool.groups.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str):
        group = pool.groups.get(model_id)
        if group is None:
            raise ModelNotFound(model_id)
        return group.card()

    # Stored responses: the workers write them into this file, the front reads and deletes them.
    @app.get("/v1/responses/{response_id}")
    async def retrieve_response(response_id: str):
        response = await asyncio.to_thread(responses_store.get, response_id) if responses_store else None
        if response is None:
            raise ResponseNotFound(response_id)
        return response

    @app.get("/v1/responses/{response_id}/input_items")
    async def list_input_items(response_id: str, limit: int = 20, order: str = "desc", after: str | None = None):
        items = await asyncio.to_thread(responses_store.input_items, response_id) if responses_store else None
        if items is None:
            raise ResponseNotFound(response_id)
        return input_items_page(items, limit, order, after)

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str):
        deleted = await asyncio.to_thread(responses_store.delete, response_id) if responses_store else False
        if not deleted:
            raise ResponseNotFound(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    @app.get("/health")
    async def health():
        models = []
        for group in pool.groups.values():
            stats = await asyncio.gather(*(i.health(client) for i in group.instances))
            models.append({
                "id": group.name, "status": group.status,
                "running": sum(s["running"] for s in stats), "queued": sum(s["queued"] for s in stats),
                "instances": [i.describe() for i in group.instances],
            })
        return {"status": "ok", "models": models}

    @app.post("/add_model")
    async def add_model(request: Request):
        try:
            payload = json.loads(await request.body())
        except ValueError as error:
            raise InvalidRequest(f"The request body is not valid JSON: {error}") from None
        items = payload if isinstance(payload, list) else [payload]
        if not items:
            raise InvalidRequest("Give one model spec or a list of them.")
        try:
            config = load_config()
        except SpecError as error:
            raise InvalidRequest(str(error), param="model_id", code="invalid_model_spec") from None
        specs = []
        for n, item in enumerate(items):
            try:
                spec = spec_from_dict(item)
                # On a Ray cluster, the node that runs an instance finds its files and resolves its spec.
                specs.append(pool.cluster.prepare(spec, config) if pool.cluster else resolve(spec, config, spec_defaults))
            except SpecError as error:
                where = f"model {n + 1}: " if len(items) > 1 else ""
                raise InvalidRequest(f"{where}{error}", param="model_id", code="invalid_model_spec") from None
        grouped = group_specs(specs)
        outcomes = await asyncio.gather(*(pool.add(name, group) for name, group in grouped.items()), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, APIError)]
        unexpected = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, APIError)]
        if unexpected:
            raise unexpected[0]
        results = [
            o.card() if not isinstance(o, APIError) else {"id": name, **o.body()}
            for name, o in zip(grouped, outcomes)
        ]
        if not errors:
            return {"object": "list", "data": results}
        first = errors[0]
        body = first.body()
        if len(grouped) > 1:
            body["error"]["message"] = f"{len(errors)} of {len(grouped)} models failed; first: {first.message}"
        return JSONResponse(status_code=first.status_code, content={**body, "data": results} if len(grouped) > 1 else body)

    @app.post("/remove_model")
    async def remove_model(body: RemoveModelRequest):
        await pool.remove(body.model)
        return {"id": body.model, "object": "model", "deleted": True}

    return app
