"""GET /v1/models, /v1/models/{id}, /health, and /tokenize, /detokenize as llama-server has them."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gallama.protocol.errors import check_token_ids
from gallama.protocol.requests import StrictModel
from gallama.protocol.responses import model_card
from gallama.serving.served_model import ServedModel

router = APIRouter()


def card(model: ServedModel) -> dict:
    return model_card(model.name, model.created, model.engine.context_length)


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [card(m) for m in request.app.state.registry.all()]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request):
    return card(request.app.state.registry.find(model_id))


@router.get("/health")
async def health(request: Request):
    models = []
    for model in request.app.state.registry.all():
        counters = model.engine.counters()
        models.append({"id": model.name, "running": counters.running_sequences, "queued": counters.queue_depth})
    return {"status": "ok", "models": models}


class TokenizeRequest(StrictModel):
    model: str
    content: str
    add_special: bool = False


class DetokenizeRequest(StrictModel):
    model: str
    tokens: list[int]


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    model: ServedModel = request.app.state.registry.get(body.model)
    return {"tokens": model.engine.tokenize(body.content, add_special=body.add_special, parse_special=True)}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    model: ServedModel = request.app.state.registry.get(body.model)
    check_token_ids(body.tokens, model.engine.vocab_size, "tokens")
    return {"content": model.engine.detokenize(body.tokens)}
