"""What gallama's HTTP server adds on top of the raw engine (issue 2).

Single-stream decode tokens/s and time to first token of `gallama serve` over
HTTP (streaming chat, temperature 0, end-of-generation tokens banned with
logit_bias so that every run decodes exactly --max-tokens tokens) against
llama-cpp-python's own `Llama` object fed the same prompt tokens (the same chat
template, rendered and tokenized the same way), with the same GGUF, thread count,
context size (4096), batch size and flash attention, in the same run. llama.cpp's
own `llama-server`, streamed to by the same HTTP client, runs beside them (unless
--llama-server ''): what any server's HTTP path and client cost on the same cores.
The repetitions alternate between the engines so that all see the same machine load.

    python bench/engine_overhead.py [--max-tokens 128] [--rounds 5] [--threads 2]

Goal: gallama's decode at least 0.95x the raw engine's; added TTFT under 10 ms (median).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.lcp_norepack import disable_repack  # noqa: E402

CONTEXT = 4096
N_BATCH = 512


def load_raw_engine(model_path: str, threads: int):
    disable_repack()
    import llama_cpp

    return llama_cpp.Llama(
        model_path=model_path, n_ctx=CONTEXT, n_batch=N_BATCH, n_ubatch=N_BATCH, n_threads=threads,
        n_threads_batch=threads, flash_attn=False, verbose=False,
    )


def prompt_tokens(llm, prompt: str) -> list[int]:
    """The prompt as gallama renders it: the GGUF's chat template, special tokens parsed."""
    from gallama.agentic.chat_template import ChatTemplate

    metadata = llm.metadata
    template = ChatTemplate(
        metadata["tokenizer.chat_template"],
        bos_token=llm.detokenize([llm.token_bos()], special=True).decode(),
        eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
    )
    text = template.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return llm.tokenize(text.encode(), add_bos=False, special=True)


def raw_run(llm, tokens: list[int], max_tokens: int) -> common.StreamResult:
    """Greedy decode of exactly max_tokens tokens with `Llama.generate` (EOS ignored, not banned)."""
    began = time.perf_counter()
    result = common.StreamResult(status=200, sent_s=began)
    generator = llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    for _ in generator:
        now = time.perf_counter() - began
        if result.first_token_s is None:
            result.first_token_s = now
        result.last_token_s = now
        result.chunks += 1
        if result.chunks >= max_tokens:
            break
    generator.close()
    result.completion_tokens = result.chunks
    result.finish_reason = "length"
    return result


async def run(args) -> None:
    model_path = args.model or common.default_model_path()
    banned = common.end_of_generation_tokens(model_path)
    llm = load_raw_engine(model_path, args.threads)
    prompts = {p: prompt_tokens(llm, p) for p in common.PROMPTS}
    servers = {"gallama": common.gallama_server(model_path, args.threads, 1, "--cache-size", str(CONTEXT))}
    if args.llama_server:
        binary = common.llama_server_binary() if args.llama_server == "build" else args.llama_server
        servers["llama-server"] = common.llama_server(binary, model_path, args.threads, 1, CONTEXT,
                                                      *common.LLAMA_SERVER_FLASH_ATTENTION_OFF)
    samples: dict[str, list[common.StreamResult]] = {"raw": [], **{name: [] for name in servers}}
    busy: list[float] = []
    cpu: dict[str, float] = defaultdict(float)
    for server in servers.values():
        server.start()
    try:
        async with httpx.AsyncClient(timeout=300) as client:
            for warmup in common.PROMPTS[:2]:
                for server in servers.values():
                    await common.stream_chat(client, server.base_url, common.chat_payload(warmup, 16, banned))
                raw_run(llm, prompts[warmup], 16)
            for round_index in range(args.rounds):
                if args.quiet_wait > 0:
                    busy.append(common.wait_for_quiet(args.quiet_cores, args.quiet_wait))
                for prompt in common.PROMPTS:
                    # Rotate which goes first, so none always runs right after another's cache.
                    order = list(samples)
                    order = order[round_index % len(order):] + order[:round_index % len(order)]
                    for engine in order:
                        if engine == "raw":
                            before_raw = time.process_time()
                            result = raw_run(llm, prompts[prompt], args.max_tokens)
                            cpu["raw engine (whole process)"] += time.process_time() - before_raw
                        else:
                            result = await timed_stream(client, servers[engine], prompt, args.max_tokens, banned, cpu)
                        samples[engine].append(result)
                print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
        llm.close()
    report(args, samples, [len(t) for t in prompts.values()], busy, cpu)


async def timed_stream(client: httpx.AsyncClient, server: common.Server, prompt: str, max_tokens: int,
                       banned: list[int], cpu: dict[str, float]) -> common.StreamResult:
    """One streamed chat, with the server's CPU by thread kind and the client's (this process) added to `cpu`."""
    payload = common.chat_payload(prompt, max_tokens, banned)
    before, client_before = common.thread_cpu_seconds(server.process.pid), time.process_time()
    result = await common.stream_chat(client, server.base_url, payload)
    cpu[f"HTTP client streaming from {server.name} (this process)"] += time.process_time() - client_before
    add_cpu(cpu, server.name, before, common.thread_cpu_seconds(server.process.pid))
    if result.error or result.tokens != max_tokens:
        raise RuntimeError(f"{server.name}: {result.error or result.tokens} ({result.finish_reason})")
    return result


def add_cpu(cpu: dict[str, float], name: str, before: dict, after: dict) -> None:
    """Splits a server's CPU time: gallama's main thread (its event loop: HTTP, routing, template, SSE; one
    process serves a one-model server) and its other threads (the engine's and llama.cpp's compute threads);
    llama-server's whole process."""
    for (pid, tid), seconds in after.items():
        spent = seconds - before.get((pid, tid), 0.0)
        if name != "gallama":
            cpu[f"{name} (whole process)"] += spent
        elif tid == pid:
            cpu["gallama event loop threads (HTTP, routing, template, SSE)"] += spent
        else:
            cpu["gallama engine and llama.cpp compute threads"] += spent


def report(args, samples: dict[str, list[common.StreamResult]], prompt_lengths: list[int], busy: list[float], cpu: dict[str, float]) -> None:
    decode = {name: common.median([s.decode_tokens_per_s for s in runs]) for name, runs in samples.items()}
    ttft = {name: common.median([s.first_token_s * 1000 for s in runs]) for name, runs in samples.items()}
    added = [
        (g.first_token_s - r.first_token_s) * 1000 for g, r in zip(samples["gallama"], samples["raw"])
    ]
    decode_ratio = common.ratio(decode["gallama"], decode["raw"])
    added_ttft = ttft["gallama"] - ttft["raw"]
    lines = [
        "| engine | decode tok/s (median) | TTFT ms (median) | TTFT ms (p95) |",
        "|---|---|---|---|",
    ]
    labels = {"gallama": "gallama over HTTP", "llama-server": "llama-server over HTTP",
              "raw": "llama-cpp-python `Llama` object"}
    for name, label in labels.items():
        if name not in samples:
            continue
        p95 = common.percentile([s.first_token_s * 1000 for s in samples[name]], 95)
        lines.append(f"| {label} | {common.fmt(decode[name])} | {common.fmt(ttft[name])} | {common.fmt(p95)} |")
    table = "\n".join(lines)
    verdict_decode = "met" if decode_ratio is not None and decode_ratio >= 0.95 else "missed"
    paired = common.median(added)
    # Each pair ran back to back, so the paired difference is the steadier estimate.
    verdict_ttft = "met" if paired is not None and paired < 10 else "missed"
    summary = (
        f"- decode ratio gallama/raw: **{common.fmt(decode_ratio, 3)}** (goal >= 0.95: {verdict_decode})\n"
        f"- added TTFT, median of the paired differences (gallama minus raw, run back to back): "
        f"**{common.fmt(paired, 1)} ms** (goal < 10 ms: {verdict_ttft}); difference of the medians "
        f"{common.fmt(added_ttft, 1)} ms"
    )
    if "llama-server" in samples:
        summary += (
            f"\n- for reference, llama-server over the same HTTP client / raw: "
            f"**{common.fmt(common.ratio(decode['llama-server'], decode['raw']), 3)}**; gallama / llama-server: "
            f"{common.fmt(common.ratio(decode['gallama'], decode['llama-server']), 3)}"
        )
    if busy and common.median(busy) > 0.5:
        summary += (
            f"\n- **Not a clean run**: other work kept {common.fmt(common.median(busy), 2)} of {os.cpu_count()} cores "
            "busy (median), so both engines ran starved and the verdicts above are not reliable."
        )
    tokens = {name: sum(r.tokens for r in runs) for name, runs in samples.items()}
    cpu_lines = ["| where | CPU ms per generated token |", "|---|---|"]
    for where, seconds in sorted(cpu.items()):
        count = next(tokens[name] for name in ("raw", "llama-server", "gallama") if name in where)
        cpu_lines.append(f"| {where} | {1000 * seconds / max(count, 1):.2f} |")
    cpu_table = "\n".join(cpu_lines)
    print(table)
    print(summary)
    print(cpu_table)
    load_note = (
        f"CPU use by other work at the start of each round: median {common.fmt(common.median(busy), 2)} cores, "
        f"max {common.fmt(max(busy), 2)} (each round waited up to {args.quiet_wait:.0f}s for under {args.quiet_cores} cores)."
        if busy else "No waiting for a quiet machine (--quiet-wait 0)."
    )
    body = f"""
Single-stream decode speed and time to first token of `gallama serve` over HTTP
against llama-cpp-python's own `Llama` object in the same process as the client,
on the same GGUF and prompt tokens (issue 2); llama.cpp's `llama-server` (one slot,
`-fa off --no-repack`), streamed to by the same client, beside them for reference.

- Date: {common.today()}
- Machine: {common.machine_description()}; shared with other engineers' test runs,
  so numbers are noisy: the engines' runs alternate (round-robin, the order
  rotating every round) so all see the same conditions, and medians are reported.
  {load_note}
- Command: `python bench/engine_overhead.py {" ".join(sys.argv[1:])}`
- Versions: {common.versions("gallama", "llama-cpp-python", "fastapi", "uvicorn")}
- Model: SmolLM2-135M-Instruct Q4_1 (the bundled default), {args.threads} threads, context 4096,
  batch 512, flash attention off (gallama's CPU default), all
  engines without weight repacking (`use_extra_bufts = False`).
- Work: {len(common.PROMPTS)} chat prompts ({min(prompt_lengths)}-{max(prompt_lengths)} prompt tokens
  after the chat template) x {args.rounds} rounds per engine; temperature 0; exactly
  {args.max_tokens} tokens each (gallama: end-of-generation tokens banned with
  `logit_bias`; `Llama.generate`: its greedy sampler, the loop stops at the count).
  Decode tok/s = (tokens - 1) / (last token time - first token time). TTFT: from
  sending the request (gallama: HTTP, chat template, tokenization, prefill) or
  calling `Llama.generate` with the tokens (raw: prefill only) to the first token.
  Both reuse the KV cache of the shared chat-template prefix.

{table}

{summary}

CPU time (user + system) per generated token, from /proc, over the measured
requests (prefill included); on a 2-core machine every CPU millisecond spent
outside llama.cpp's compute threads competes with them:

{cpu_table}
"""
    common.write_section("Engine overhead: gallama vs the raw llama-cpp-python engine", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file; default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-server", default="build", help="llama-server binary for the reference column "
                        "('build': the cached build of bench/build_llama_server.sh; '': leave it out)")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait for a quiet machine before each round (0: never)")
    parser.add_argument("--quiet-cores", type=float, default=0.3, help="CPU use by others (cores) that counts as quiet")
    common.exit_on_sigterm()
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
