"""Function-calling accuracy on BFCL-format data against OpenAI-compatible servers.

Each question goes to the server as `tools` (the BFCL docs converted to JSON Schema,
see bfcl_checker.to_openai_tools) with the openai client; the answer's tool calls are
scored with BFCL's AST rules (bfcl_checker.check). Every emitted call is also checked
for being well-formed: JSON arguments, a given tool's name, arguments valid against
that tool's schema. A failed request (a 400, a 500, a timeout) counts as a wrong answer
and is tallied by its error kind.

  python bench/bfcl.py --start-gallama --with-llama-server "$(bench/build_llama_server.sh)" --limit 10
  python bench/bfcl.py --base-url http://127.0.0.1:8000/v1 --model SmolLM2-135M-Instruct.Q4_1 --categories simple_python
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, peers  # noqa: E402
from bench.bfcl_checker import check, inspect_call, is_irrelevance, to_openai_tools  # noqa: E402

DEFAULT_DATA = peers.REPO.parent / "shared" / "data" / "bfcl-dev"
TITLE = "Function calling: BFCL accuracy (bench/bfcl.py)"
CATEGORY_ORDER = [
    "simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
    "irrelevance", "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
    "live_irrelevance", "live_relevance",
]


@dataclass
class Question:
    id: str
    category: str
    messages: list[dict]
    functions: list[dict]
    ground_truth: list[dict] | None


@dataclass
class Outcome:
    id: str
    category: str
    correct: bool
    error_type: str = ""
    detail: str = ""
    calls: list[dict] = field(default_factory=list)  # {"name", "arguments", "problems"}
    content: str | None = None
    seconds: float = 0.0


def load(data: Path, categories: list[str] | None, limit: int | None) -> list[Question]:
    files = sorted(data.glob("BFCL_v4_*.json"))
    if not files:
        raise SystemExit(f"no BFCL_v4_*.json files in {data}")
    found = {f.stem.removeprefix("BFCL_v4_"): f for f in files}
    wanted = categories or sorted(found, key=lambda c: (CATEGORY_ORDER + [c]).index(c))
    unknown = [c for c in wanted if c not in found]
    if unknown:
        raise SystemExit(f"unknown categories {unknown}; present: {sorted(found)}")
    questions = []
    for category in wanted:
        answers = {}
        answer_file = data / "possible_answer" / found[category].name
        if answer_file.exists():
            for line in answer_file.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    answers[row["id"]] = row["ground_truth"]
        rows = [json.loads(line) for line in found[category].read_text().splitlines() if line.strip()]
        for row in rows[:limit]:
            if row["id"] not in answers and not is_irrelevance(category) and "relevance" not in category:
                continue  # no ground truth to score against
            questions.append(Question(row["id"], category, row["question"][0], row["function"], answers.get(row["id"])))
    return questions


def ask(client, target: peers.Target, question: Question, max_tokens: int) -> Outcome:
    tools, names = to_openai_tools(question.functions, question.category)
    started = time.perf_counter()
    try:
        reply = client.chat.completions.create(
            model=target.model, messages=question.messages, tools=tools,
            temperature=0.0, max_tokens=max_tokens,
        )
    except Exception as exc:  # recorded per question: the benchmark measures the server
        kind, message = peers.error_kind(exc)
        return Outcome(question.id, question.category, False, kind, message, seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    message = reply.choices[0].message if reply.choices else None
    raw_calls = (message.tool_calls or []) if message else []
    calls, decoded, undecodable = [], [], False
    for call in raw_calls:
        function = getattr(call, "function", None)
        name = getattr(function, "name", "") or ""
        arguments = getattr(function, "arguments", "") or ""
        shape = inspect_call(name, arguments, tools)
        calls.append({"name": name, "arguments": arguments, "problems": shape.problems})
        if not isinstance(shape.parsed, dict):
            undecodable = True
        else:
            decoded.append({names.get(name, name): shape.parsed})
    content = message.content if message else None
    if undecodable:
        # BFCL: an answer that does not decode is no call at all, which is right only for irrelevance
        correct = is_irrelevance(question.category)
        return Outcome(question.id, question.category, correct, "" if correct else "undecodable_call",
                       "arguments are not a JSON object", calls, content, seconds)
    verdict = check(question.category, question.functions, decoded, question.ground_truth)
    return Outcome(question.id, question.category, verdict.valid, verdict.error_type, verdict.error,
                   calls, content, seconds)


def summarize(outcomes: list[Outcome]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    for outcome in outcomes:
        row = summary.setdefault(outcome.category, {"n": 0, "correct": 0, "calls": 0, "well_formed": 0,
                                                    "failures": collections.Counter()})
        row["n"] += 1
        row["correct"] += outcome.correct
        row["calls"] += len(outcome.calls)
        row["well_formed"] += sum(not call["problems"] for call in outcome.calls)
        if not outcome.correct:
            row["failures"][outcome.error_type or "wrong"] += 1
    return summary


def table(results: dict[str, dict[str, dict]], categories: list[str]) -> str:
    labels = list(results)
    lines = ["| category | n | " + " | ".join(f"{label} accuracy" for label in labels) + " |",
             "|---|---|" + "---|" * len(labels)]
    totals = {label: [0, 0, 0, 0] for label in labels}
    for category in categories:
        n = next((results[label][category]["n"] for label in labels if category in results[label]), 0)
        cells = []
        for label in labels:
            row = results[label].get(category)
            if row is None:
                cells.append("-")
                continue
            cells.append(f"{peers.pct(row['correct'], row['n'])} ({row['correct']}/{row['n']})")
            total = totals[label]
            total[0] += row["correct"]; total[1] += row["n"]; total[2] += row["well_formed"]; total[3] += row["calls"]
        lines.append(f"| {category} | {n} | " + " | ".join(cells) + " |")
    lines.append("| **all** | " + str(next(iter(totals.values()))[1] if totals else 0) + " | "
                 + " | ".join(f"**{peers.pct(t[0], t[1])}** ({t[0]}/{t[1]})" for t in totals.values()) + " |")
    lines.append("| well-formed calls | | " + " | ".join(f"{peers.pct(t[2], t[3])} ({t[2]}/{t[3]})" for t in totals.values()) + " |")
    return "\n".join(lines)


def failure_lines(results: dict[str, dict[str, dict]]) -> str:
    lines = []
    for label, summary in results.items():
        counts = collections.Counter()
        for row in summary.values():
            counts.update(row["failures"])
        if counts:
            lines.append(f"- {label}: " + ", ".join(f"{kind} {count}" for kind, count in counts.most_common()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    peers.add_arguments(parser, DEFAULT_DATA, "BFCL data folder", max_tokens=400)
    args = parser.parse_args(argv)

    if not (args.base_url or args.start_gallama or args.with_llama_server):
        parser.error("nothing to measure: give --base-url, --start-gallama and/or --with-llama-server")
    categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
    questions = load(args.data, categories, args.limit)
    present = [c for c in CATEGORY_ORDER if any(q.category == c for q in questions)]
    present += sorted({q.category for q in questions} - set(present))
    gguf = args.gguf or common.default_model_path()
    print(f"{len(questions)} questions in {len(present)} categories from {args.data}", file=sys.stderr)

    results: dict[str, dict[str, dict]] = {}
    details: dict[str, list[dict]] = {}
    walls: list[str] = []
    for label, plan in peers.plans(args, gguf):
        with plan as target:
            started = time.perf_counter()
            outcomes = peers.run_each(target, questions, lambda client, target, q: ask(client, target, q, args.max_tokens),
                                      args.concurrency, args.timeout, "questions")
            walls.append(f"{label} {time.perf_counter() - started:.0f} s")
        results[label] = summarize(outcomes)
        details[label] = [outcome.__dict__ for outcome in outcomes]

    report = table(results, present) + "\n\nWall time for all questions: " + ", ".join(walls) + "."
    failures = failure_lines(results)
    print(report)
    if failures:
        print("\nfailures by kind:\n" + failures)
    if args.save:
        args.save.write_text(json.dumps(details, indent=1, ensure_ascii=False, default=str))
    if not args.no_docs:
        body = "\n".join([
            f"Latest run: {common.today()}, gallama at `{peers.gallama_head()}`, model `{Path(gguf).name}`, "
            f"data `{args.data.name}` ({len(questions)} questions, "
            f"{'first ' + str(args.limit) + ' per category' if args.limit else 'all'}), max_tokens {args.max_tokens}.",
            "",
            "Each question goes to the server as OpenAI `tools` (BFCL's docs converted: dict->object, "
            "float->number, tuple->array, any and unknown types->string, `.` in names->`_`, mapped back "
            "before checking; Java/JavaScript parameters as strings in the language's syntax, as BFCL does), "
            "`tool_choice` left to the server's default, temperature 0. Answers are scored with "
            "`bench/bfcl_checker.py`, a reimplementation of BFCL's AST checker; a failed request counts as "
            "wrong and is tallied by its error kind below. \"Well-formed\": the share of emitted calls whose "
            "arguments parse as a JSON object, name a given tool and validate against its schema (`jsonschema`).",
            "",
            f"Machine: {peers.machine_note()}.",
            "",
            "```",
            peers.command_line(),
            "```",
            "",
            report,
            "",
            "Failures by kind:",
            "",
            failures or "- none",
        ])
        common.write_section(TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
