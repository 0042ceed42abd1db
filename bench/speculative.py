"""Speculative decoding benchmark: prompt lookup (n-gram) in gallama and in llama-server (issue 10).

Four servers on the same GGUF, same threads, one sequence each, in the same run:
gallama without and with `draft_mode=ngram`, llama-server without and with its
n-gram speculation (`--spec-type ngram-simple`). Their requests are interleaved
round by round. Two workloads, streaming chat at temperature 0:

- rewrite: a ~300-word text to copy with one word changed (the output repeats
  the prompt: where prompt lookup pays off);
- free: open-ended prompts (where it can only cost).

Reported per server: decode tokens/s (all decoded tokens over all decode time), the drafted tokens'
acceptance rate, whether greedy outputs match the same server without
speculation; then speed-ups (with / without) and the issue's goals.

    python bench/speculative.py [--rounds 2] [--draft-tokens 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

# The opening of "Alice's Adventures in Wonderland" (Lewis Carroll, 1865; public domain).
SOURCE_TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
    "once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations "
    "in it, and what is the use of a book, thought Alice, without pictures or conversations? So she was "
    "considering in her own mind (as well as she could, for the hot day made her feel very sleepy and stupid), "
    "whether the pleasure of making a daisy-chain would be worth the trouble of getting up and picking the "
    "daisies, when suddenly a White Rabbit with pink eyes ran close by her. There was nothing so very remarkable "
    "in that; nor did Alice think it so very much out of the way to hear the Rabbit say to itself, Oh dear! Oh "
    "dear! I shall be late! But when the Rabbit actually took a watch out of its waistcoat-pocket, and looked at "
    "it, and then hurried on, Alice started to her feet, for it flashed across her mind that she had never before "
    "seen a rabbit with either a waistcoat-pocket, or a watch to take out of it, and burning with curiosity, she "
    "ran across the field after it, and fortunately was just in time to see it pop down a large rabbit-hole under "
    "the hedge. In another moment down went Alice after it, never once considering how in the world she was to "
    "get out again. The rabbit-hole went straight on like a tunnel for some way, and then dipped suddenly down, "
    "so suddenly that Alice had not a moment to think about stopping herself before she found herself falling "
    "down a very deep well. Either the well was very deep, or she fell very slowly, for she had plenty of time as "
    "she went down to look about her and to wonder what was going to happen next."
)
CHANGES = [("sister", "brother"), ("Rabbit", "Cat"), ("daisies", "roses")]
REWRITE = "Rewrite the following text word for word, changing only the word '{old}' to '{new}' everywhere:\n\n{text}"
FREE_PROMPTS = common.PROMPTS[:3]
SERVERS = ["gallama", "gallama+ngram", "llama-server", "llama-server+ngram"]


def start_servers(args, model_path: str) -> dict[str, common.Server]:
    context = 4096
    spec = f"model_id={model_path} model_name=bench threads={args.threads} max_sequences=1 cache_size={context}"

    def gallama(extra: str) -> common.Server:
        port = common.free_port()
        command = [sys.executable, "-m", "gallama", "serve", "--port", str(port), "-id", f"{spec} {extra}".strip(),
                   "--log-level", "warning"]
        return common.Server("gallama", command, port)

    binary = args.llama_server or common.llama_server_binary()
    attention = common.LLAMA_SERVER_FLASH_ATTENTION_OFF  # gallama's CPU default, the same kernels on both sides
    ngram = ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", str(args.ngram_size),
             "--spec-ngram-simple-size-m", str(args.draft_tokens), "--spec-draft-n-max", str(args.draft_tokens)]
    servers = {
        "gallama": gallama(""),
        "gallama+ngram": gallama(f"draft_mode=ngram num_draft_tokens={args.draft_tokens}"),
        "llama-server": common.llama_server(binary, model_path, args.threads, 1, context, *attention),
        "llama-server+ngram": common.llama_server(binary, model_path, args.threads, 1, context, *attention, *ngram),
    }
    started = {}
    try:
        for name, server in servers.items():
            started[name] = server.start()
    except BaseException:
        for server in started.values():
            server.stop()
        raise
    return started


def drafted_and_accepted(result: common.StreamResult) -> tuple[int, int]:
    """Drafted and accepted tokens: gallama reports them in usage, llama-server in its timings."""
    details = result.usage.get("completion_tokens_details") or {}
    if "accepted_prediction_tokens" in details:
        accepted = details["accepted_prediction_tokens"]
        return accepted + details.get("rejected_prediction_tokens", 0), accepted
    return result.timings.get("draft_n", 0), result.timings.get("draft_n_accepted", 0)


async def measure(args, servers: dict[str, common.Server]) -> dict:
    workloads = {
        "rewrite": [REWRITE.format(old=old, new=new, text=SOURCE_TEXT) for old, new in CHANGES],
        "free": FREE_PROMPTS,
    }
    max_tokens = {"rewrite": args.rewrite_tokens, "free": args.free_tokens}
    speeds: dict = defaultdict(list)
    drafts: dict = defaultdict(lambda: [0, 0])
    texts: dict = {}
    busy: list[float] = []
    problems: list[str] = []
    tokenizer = common.VocabTokenizer(args.model or common.default_model_path())
    async with httpx.AsyncClient(timeout=600) as client:
        for name, server in servers.items():  # warm-up: first-request costs stay out of the numbers
            await common.stream_chat(client, server.base_url, common.chat_payload("Hello", 8, []))
        for round_index in range(args.rounds):
            if args.quiet_wait:
                busy.append(common.wait_for_quiet(args.quiet_cores, args.quiet_wait))
            order = SERVERS[round_index % len(SERVERS):] + SERVERS[: round_index % len(SERVERS)]
            for workload, prompts in workloads.items():
                for prompt_index, prompt in enumerate(prompts):
                    for name in order:
                        payload = common.chat_payload(prompt, max_tokens[workload], [])
                        result = await common.stream_chat(client, servers[name].base_url, payload)
                        if result.error or result.status != 200:
                            problems.append(f"{name} {workload}: {result.status} {result.error}")
                            continue
                        common.count_first_chunk_tokens([result], tokenizer)
                        if result.decode_tokens_per_s:  # tokens and seconds after the first chunk
                            speeds[name, workload].append(
                                (result.tokens - result.first_chunk_tokens, result.last_token_s - result.first_token_s)
                            )
                        drafted, accepted = drafted_and_accepted(result)
                        drafts[name, workload][0] += drafted
                        drafts[name, workload][1] += accepted
                        texts[name, workload, prompt_index] = result.text
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    return {"speeds": speeds, "drafts": drafts, "texts": texts, "busy": busy, "problems": problems}


def report(args, data: dict, command: str) -> None:
    speeds, drafts, texts = data["speeds"], data["drafts"], data["texts"]
    # Over all of a workload's requests: a short answer (the small model sometimes declines to copy)
    # weighs as little as it decodes.
    speed = {key: sum(t for t, _ in values) / sum(s for _, s in values) for key, values in speeds.items()}

    def same_output(name: str, workload: str) -> str:
        base = name.removesuffix("+ngram")
        keys = [k for k in texts if k[0] == name and k[1] == workload]
        same = sum(texts[k] == texts.get((base, workload, k[2])) for k in keys)
        return f"{same}/{len(keys)}"

    def acceptance(name: str, workload: str) -> str:
        drafted, accepted = drafts[name, workload]
        return f"{accepted / drafted:.0%} ({accepted}/{drafted})" if drafted else "-"

    table = ["| server | workload | decode tok/s | speed-up | drafts accepted | output as without speculation |",
             "|---|---|---|---|---|---|"]
    speedups = {}
    for name in SERVERS:
        for workload in ("rewrite", "free"):
            base = name.removesuffix("+ngram")
            up = common.ratio(speed.get((name, workload)), speed.get((base, workload))) if name != base else None
            speedups[name, workload] = up
            table.append(
                f"| {name} | {workload} | {common.fmt(speed.get((name, workload)))} | "
                f"{common.fmt(up, 2, 'x') if up else '-'} | {acceptance(name, workload) if name != base else '-'} | "
                f"{same_output(name, workload) if name != base else '-'} |"
            )
    g_rewrite, g_free = speedups.get(("gallama+ngram", "rewrite")), speedups.get(("gallama+ngram", "free"))
    l_rewrite = speedups.get(("llama-server+ngram", "rewrite"))

    def goal(label: str, value: float | None, target: float | None) -> str:
        if value is None or target is None:
            return f"- {label}: n/a"
        return f"- {label}: {value:.2f} (goal >= {target:.2f}): {'met' if value >= target else 'missed'}"

    goals = [
        goal("rewrite speed-up, gallama n-gram", g_rewrite, 1.5),
        goal("free generation, gallama n-gram / plain", g_free, 0.95),
        goal("rewrite speed-up, gallama / llama-server's", g_rewrite, l_rewrite),
    ]
    busy = common.median(data["busy"]) if data["busy"] else None
    if busy is not None and busy > 0.5:
        goals.append(f"- **Not a clean run**: other work kept {busy:.2f} cores busy (median); ratios are unreliable.")
    text = "\n".join(table)
    print(text + "\n\n" + "\n".join(goals))
    for problem in sorted(set(data["problems"]))[:20]:
        print("problem:", problem)
    body = f"""
Prompt-lookup speculative decoding in gallama (`draft_mode=ngram`) and in llama.cpp's
`llama-server` (`--spec-type ngram-simple`), each against itself without speculation,
same GGUF and threads, one sequence per server, requests interleaved round by round (issue 10).

- Date: {common.today()}
- Machine: {common.machine_description()}
- Command: `{command}`
- Versions: {common.versions("gallama", "llama-cpp-python", "llguidance")}; llama-server from `bench/build_llama_server.sh`.
- Model: SmolLM2-135M-Instruct Q4_1 (bundled), flash attention off on both sides (gallama's CPU
  default; `-fa off`). Drafts of up to {args.draft_tokens} tokens; llama-server
  looks up {args.ngram_size}-grams, gallama 3-grams then 2-grams.
- Workloads, {args.rounds} rounds: "rewrite" = copy a 300-word public-domain text with one word changed
  ({len(CHANGES)} prompts, {args.rewrite_tokens} tokens at most); "free" = {len(FREE_PROMPTS)} open prompts
  ({args.free_tokens} tokens at most). Streaming chat, temperature 0. Decode tok/s = (tokens - tokens of
  the first chunk) / (last chunk time - first chunk time), summed over a workload's requests. "Output as without speculation": greedy outputs
  equal to the same server's without speculation.
- Busy cores from other work before rounds (median): {common.fmt(busy, 2)}

{text}

Goals (issue 10):

{chr(10).join(goals)}
"""
    common.write_section("Speculative decoding: prompt lookup, gallama vs llama-server", body)


async def run(args) -> None:
    model_path = args.model or common.default_model_path()
    servers: dict[str, common.Server] = {}
    try:
        servers = start_servers(args, model_path)
        data = await measure(args, servers)
    finally:
        for server in servers.values():
            server.stop()
    report(args, data, ("python bench/speculative.py " + " ".join(sys.argv[1:])).strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file; default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--llama-server", help="the llama-server binary; default: bench/build_llama_server.sh's")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--draft-tokens", type=int, default=5)
    parser.add_argument("--ngram-size", type=int, default=3, help="llama-server's lookup n-gram length")
    parser.add_argument("--rewrite-tokens", type=int, default=450)
    parser.add_argument("--free-tokens", type=int, default=200)
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait for a quiet machine before each round")
    parser.add_argument("--quiet-cores", type=float, default=0.3)
    args = parser.parse_args()
    common.exit_on_sigterm()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
