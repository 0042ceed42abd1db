"""Embeddings per second through gallama's /v1/embeddings against sentence-transformers called directly (issue 7).

Both run the bundled all-MiniLM-L6-v2 on the same CPU threads in the same run,
taking turns (round-robin) so that both see the same machine load:

- 1, 32 and 256 inputs per request, one client after the other;
- 8 concurrent clients of one input each: gallama batches them (Infinity's
  dynamic batching); the direct peer is 8 threads each calling `encode` on
  one input, and, as an upper bound, one `encode` of all of them.

    python bench/embeddings.py [--threads N] [--rounds 3] [--no-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from gallama.bundled_models import DEFAULT_EMBEDDING_MODEL, locate  # noqa: E402
from gallama.engines.embedding.backend import default_threads  # noqa: E402

MODEL = DEFAULT_EMBEDDING_MODEL.name
WORDS = (
    "the a model server request batch token vector search query document answer local fast small agent tool "
    "call weather city river mountain music history science garden kitchen market school travel morning "
    "quickly slowly carefully finds returns reads writes embeds compares ranks stores sends"
).split()
CONCURRENCY = 8


def corpus(count: int, seed: int = 7) -> list[str]:
    """Sentences of 8 to 24 words: the length of typical retrieval chunks' sentences."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))).capitalize() + "." for _ in range(count)]


def rate(count: int, run: Callable[[], None]) -> float:
    began = time.perf_counter()
    run()
    return count / (time.perf_counter() - began)


def gallama_sequential(client: openai.OpenAI, texts: list[str], per_request: int) -> Callable[[], None]:
    def run() -> None:
        for start in range(0, len(texts), per_request):
            reply = client.embeddings.create(model=MODEL, input=texts[start:start + per_request])
            assert len(reply.data) == len(texts[start:start + per_request])

    return run


def gallama_concurrent(base_url: str, texts: list[str]) -> Callable[[], None]:
    async def clients() -> None:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused")
        queue = list(texts)

        async def one_client() -> None:
            while queue:
                text = queue.pop()
                reply = await client.embeddings.create(model=MODEL, input=text)
                assert len(reply.data) == 1

        await asyncio.gather(*(one_client() for _ in range(CONCURRENCY)))
        await client.close()

    return lambda: asyncio.run(clients())


def direct_sequential(model, texts: list[str], per_request: int) -> Callable[[], None]:
    def run() -> None:
        for start in range(0, len(texts), per_request):
            model.encode(texts[start:start + per_request], batch_size=32, normalize_embeddings=True)

    return run


def direct_threads(model, texts: list[str]) -> Callable[[], None]:
    def run() -> None:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(lambda text: model.encode([text], normalize_embeddings=True), texts))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="CPU threads for gallama's worker and for torch here (default: gallama's, all cores but one)")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of each measurement (medians reported)")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    common.exit_on_sigterm()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model_path = str(locate(DEFAULT_EMBEDDING_MODEL))
    direct = SentenceTransformer(model_path, device="cpu")
    port = common.free_port()
    server = common.Server("gallama-embeddings", [
        sys.executable, "-m", "gallama", "serve", "-id", f"model_id={model_path} model_name={MODEL}",
        "--threads", str(args.threads), "--port", str(port), "--log-level", "warning",
    ], port)
    texts = corpus(512)
    cases = {
        "1 input per request": (64, lambda c: gallama_sequential(c, texts[:64], 1), lambda: direct_sequential(direct, texts[:64], 1)),
        "32 inputs per request": (256, lambda c: gallama_sequential(c, texts[:256], 32), lambda: direct_sequential(direct, texts[:256], 32)),
        "256 inputs per request": (512, lambda c: gallama_sequential(c, texts, 256), lambda: direct_sequential(direct, texts, 256)),
        f"{CONCURRENCY} concurrent clients, 1 input each": (
            128, lambda c: gallama_concurrent(server.base_url + "/v1", texts[:128]), lambda: direct_threads(direct, texts[:128]),
        ),
    }
    results: dict[str, tuple[float, float]] = {}
    load_before = os.getloadavg()[0]
    try:
        server.start(timeout_s=300)
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")
        gallama_sequential(client, texts[:64], 32)()  # warm both up
        direct_sequential(direct, texts[:64], 32)()
        for name, (count, through_gallama, called_directly) in cases.items():
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(rate(count, through_gallama(client)))
                theirs.append(rate(count, called_directly()))
            results[name] = (common.median(ours), common.median(theirs))
            print(f"{name}: gallama {results[name][0]:.1f}/s, sentence-transformers {results[name][1]:.1f}/s, "
                  f"ratio {common.ratio(*results[name]):.2f}x", flush=True)
        upper = common.median([rate(128, direct_sequential(direct, texts[:128], 128)) for _ in range(args.rounds)])
        print(f"sentence-transformers, the same 128 inputs in one encode call (upper bound): {upper:.1f}/s")
    finally:
        peak = server.stop()
    print(f"gallama peak RSS (front and worker): {peak:.0f} MiB")
    if not args.no_docs:
        write_docs(results, upper, peak, args, (load_before, os.getloadavg()[0]))


def write_docs(results: dict[str, tuple[float, float]], upper: float, peak_mib: float, args, load: tuple[float, float]) -> None:
    rows = "\n".join(
        f"| {name} | {ours:.1f} | {theirs:.1f} | {common.ratio(ours, theirs):.2f}x |" for name, (ours, theirs) in results.items()
    )
    body = f"""
`python bench/embeddings.py --threads {args.threads} --rounds {args.rounds}` ({common.today()}).
{common.machine_description()}; {common.versions("infinity-emb", "sentence-transformers", "torch")}.

all-MiniLM-L6-v2 (bundled), torch threads: {args.threads} on both sides, sentences of 8 to 24 words,
medians of {args.rounds} interleaved rounds. gallama is measured through HTTP with the official
`openai` client (base64 vectors, as it asks by default); sentence-transformers is `encode` called
in-process (batch_size 32). For the concurrent row the direct peer is {CONCURRENCY} threads each calling
`encode` on one input.

| case | gallama (embeddings/s) | sentence-transformers direct | ratio |
|---|---|---|---|
{rows}

sentence-transformers encoding the same 128 inputs in one call (the upper bound for the concurrent
row): {upper:.1f}/s. gallama's peak RSS (front and embedding worker): {peak_mib:.0f} MiB.
Load average before and after the run: {load[0]:.1f}, {load[1]:.1f} (other jobs shared the machine;
the single-input row moves most between runs, 0.65x to 0.98x, as it pays HTTP per input).
"""
    common.write_section("Embeddings: /v1/embeddings against sentence-transformers", body)


if __name__ == "__main__":
    main()
