"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gallama.protocol.embeddings import EmbeddingRequest, encode_vector

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request):
    model = request.app.state.registry.get_embedding(body.model)
    result = await model.embed(body.inputs(), truncate_to=body.truncate_prompt_tokens, dimensions=body.dimensions)
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(vector, body.encoding_format)}
        for i, vector in enumerate(result.vectors)
    ]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return {"object": "list", "data": data, "model": body.model, "usage": usage}
