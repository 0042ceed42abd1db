"""Structured-output coverage on real-world JSON schemas (a folder of schemas, by category).

For every schema:
- whether llguidance itself compiles it (`LLMatcher.grammar_from_json_schema` then
  `LLMatcher.validate_grammar`, with the model's own tokenizer), and whether gallama's
  closest grammar does (exact, else relaxed: README "Structured output"), and in how long;
- whether `jsonschema` can check it (its draft's meta-schema accepts it); the ones it
  cannot are a bucket of their own;
- whether the server accepts it as `response_format: {"type": "json_schema", "json_schema":
  {"name", "schema", "strict": true}}` (anything but a 400), and, for accepted ones that
  finish with `finish_reason == "stop"`, whether the output validates (jsonschema, with
  format checks, under the schema's `$schema` draft); `"length"` is counted as running out
  of tokens.

The goal for gallama: every `stop` output valid, and no schema rejected that llguidance
compiles (those are listed). For a started gallama, the retries its answer check spent
(`gallama_schema_retries_total` on /metrics) are reported.

  python bench/schema_coverage.py --start-gallama --limit 5
  python bench/schema_coverage.py --base-url http://127.0.0.1:8000/v1 --model SmolLM2-135M-Instruct.Q4_1 --limit 2
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, peers  # noqa: E402

DEFAULT_DATA = peers.REPO.parent / "shared" / "data" / "jsonschemabench-dev" / "schemas"
TITLE = "Structured output: JSON-schema coverage (bench/schema_coverage.py)"


@dataclass
class Schema:
    category: str
    name: str
    text: str
    schema: object = None
    read_error: str = ""
    llguidance_error: str | None = None  # None: compiles
    gallama_error: str | None = None  # None: gallama's closest grammar compiles
    compile_ms: float = 0.0  # gallama: the grammar chosen and compiled for the tokenizer
    checker: object = None  # a jsonschema validator, or None
    checker_error: str = ""
    draft: str = ""


@dataclass
class Result:
    category: str
    name: str
    status: str  # rejected | error | valid | invalid | length | unchecked | other
    detail: str = ""
    finish_reason: str = ""
    seconds: float = 0.0
    tokens: int = 0


# ---------------------------------------------------------------- schemas


def llguidance_tokenizer(gguf: str):
    """The llguidance tokenizer of the GGUF's vocabulary, as gallama builds it; None when unavailable."""
    try:
        import llama_cpp
        from llguidance.llamacpp import lltokenizer_from_vocab

        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp.llama_model_load_from_file(gguf.encode(), params)
        if not model:
            return None
        return lltokenizer_from_vocab(llama_cpp.llama_model_get_vocab(model))
    except Exception as exc:  # the check still runs, without a tokenizer
        print(f"no llguidance tokenizer for {gguf}: {exc}", file=sys.stderr)
        return None


def llguidance_compiles(schema_text: str, tokenizer) -> str | None:
    """None when llguidance compiles the schema, else its error message."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text)
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
    except Exception as exc:  # ValueError on malformed input
        return f"{type(exc).__name__}: {exc}"
    return error or None


def gallama_compiles(schema, tokenizer) -> tuple[str | None, float]:
    """(None or gallama's error, milliseconds): the closest grammar chosen and compiled, as a request would."""
    from gallama.agentic.constraints import ConstraintCompiler, ConstraintError, json_schema_grammar

    started = time.perf_counter()
    try:
        grammar = json_schema_grammar(schema)
        if tokenizer is not None:
            ConstraintCompiler(tokenizer).matcher(grammar)
            error = None
        else:
            import llguidance

            error = llguidance.LLMatcher.validate_grammar(grammar) or None
    except ConstraintError as exc:
        error = str(exc)
    return error, (time.perf_counter() - started) * 1000


def jsonschema_checker(schema) -> tuple[object, str, str]:
    """(validator, draft name, error): the validator for the schema's `$schema` draft; a schema
    without `$schema` gets the first of 2020-12, 7, 4 whose meta-schema accepts it."""
    import jsonschema

    if not isinstance(schema, (dict, bool)):
        return None, "", "not a schema object"
    declared = isinstance(schema, dict) and "$schema" in schema
    candidates = ([jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)]
                  if declared else
                  [jsonschema.Draft202012Validator, jsonschema.Draft7Validator, jsonschema.Draft4Validator])
    error = ""
    for cls in candidates:
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            error = f"{cls.__name__}: {exc.message[:200]}"
            continue
        except Exception as exc:
            error = f"{cls.__name__}: {type(exc).__name__}: {str(exc)[:200]}"
            continue
        return cls(schema, format_checker=cls.FORMAT_CHECKER), cls.__name__, ""
    return None, "", error


def load(folder: Path, categories: list[str] | None, limit: int | None, tokenizer) -> list[Schema]:
    if not folder.is_dir():
        raise SystemExit(f"no schema folder {folder}")
    dirs = sorted(d for d in folder.iterdir() if d.is_dir())
    if not dirs:  # a flat folder of schemas: one category
        dirs = [folder]
    if categories:
        unknown = set(categories) - {d.name for d in dirs}
        if unknown:
            raise SystemExit(f"unknown categories {sorted(unknown)}; present: {[d.name for d in dirs]}")
        dirs = [d for d in dirs if d.name in categories]
    schemas = []
    for directory in dirs:
        for path in sorted(directory.glob("*.json"))[:limit]:
            item = Schema(directory.name, path.stem, path.read_text())
            try:
                item.schema = json.loads(item.text)
            except json.JSONDecodeError as exc:
                item.read_error = f"not JSON: {exc}"
                schemas.append(item)
                continue
            item.llguidance_error = llguidance_compiles(item.text, tokenizer)
            item.gallama_error, item.compile_ms = gallama_compiles(item.schema, tokenizer)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                item.checker, item.draft, item.checker_error = jsonschema_checker(item.schema)
            schemas.append(item)
    return schemas


# ---------------------------------------------------------------- requests


def prompt(schema: Schema, max_chars: int) -> list[dict]:
    compact = json.dumps(schema.schema, separators=(",", ":"), ensure_ascii=False)
    if len(compact) <= max_chars:
        ask = f"Generate a JSON value that follows this JSON schema:\n{compact}"
    else:
        about = schema.schema if isinstance(schema.schema, dict) else {}
        hint = " ".join(str(about.get(k, "")) for k in ("title", "description")).strip()[:300]
        ask = f"Generate a JSON value for the schema given in response_format{': ' + hint if hint else ''}."
    return [{"role": "system", "content": "You answer with JSON only."}, {"role": "user", "content": ask}]


def validate(schema: Schema, content: str | None) -> tuple[str, str]:
    if schema.checker is None:
        return "unchecked", schema.checker_error
    try:
        value = json.loads(content or "")
    except json.JSONDecodeError as exc:
        return "invalid", f"not JSON: {exc}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import jsonschema

            error = jsonschema.exceptions.best_match(schema.checker.iter_errors(value))
    except Exception as exc:  # e.g. an unresolvable remote $ref: jsonschema cannot decide
        return "unchecked", f"jsonschema failed: {type(exc).__name__}: {str(exc)[:200]}"
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path)
        return "invalid", f"at /{path}: {error.message[:200]}"
    return "valid", ""


def ask(client, target: peers.Target, schema: Schema, max_tokens: int, prompt_chars: int) -> Result:
    started = time.perf_counter()
    if schema.read_error:
        return Result(schema.category, schema.name, "unreadable", schema.read_error)
    try:
        reply = client.chat.completions.create(
            model=target.model, messages=prompt(schema, prompt_chars), max_tokens=max_tokens, temperature=0.0,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "x", "schema": schema.schema, "strict": True}},
        )
    except Exception as exc:  # recorded per schema
        kind, message = peers.error_kind(exc)
        status = "rejected" if kind.startswith("http_400") else "error"
        return Result(schema.category, schema.name, status, f"{kind}: {message}", seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    choice = reply.choices[0]
    tokens = reply.usage.completion_tokens if reply.usage else 0
    if choice.finish_reason == "length":
        return Result(schema.category, schema.name, "length", "", "length", seconds, tokens)
    if choice.finish_reason != "stop":
        return Result(schema.category, schema.name, "other", f"finish_reason {choice.finish_reason}",
                      str(choice.finish_reason), seconds, tokens)
    status, detail = validate(schema, choice.message.content)
    return Result(schema.category, schema.name, status, detail, "stop", seconds, tokens)


# ---------------------------------------------------------------- report


def summarize(schemas: list[Schema], results: list[Result]) -> dict[str, dict]:
    by_name = {(s.category, s.name): s for s in schemas}
    summary: dict[str, dict] = {}
    for result in results:
        schema = by_name[(result.category, result.name)]
        row = summary.setdefault(result.category, collections.Counter())
        row["n"] += 1
        row["llguidance"] += schema.llguidance_error is None and not schema.read_error
        row["gallama_compiles"] += schema.gallama_error is None and not schema.read_error
        row["jsonschema_unsupported"] += schema.checker is None
        row[result.status] += 1
        accepted = result.status not in ("rejected", "error", "unreadable")
        row["accepted"] += accepted
        row["stop"] += result.status in ("valid", "invalid", "unchecked")
        row["stop_checked"] += result.status in ("valid", "invalid")
    return summary


def table(label: str, summary: dict[str, dict]) -> str:
    lines = [f"**{label}**", "",
             "| category | schemas | llguidance compiles | gallama compiles | accepted | valid (of stop) | invalid "
             "| out of tokens (of accepted) | jsonschema can't check | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    total = collections.Counter()
    for category, row in list(summary.items()) + [("**all**", None)]:
        if row is None:
            row = total
        else:
            total.update(row)
        lines.append(
            f"| {category} | {row['n']} | {peers.pct(row['llguidance'], row['n'])} "
            f"| {peers.pct(row['gallama_compiles'], row['n'])} "
            f"| {peers.pct(row['accepted'], row['n'])} ({row['accepted']}) "
            f"| {peers.pct(row['valid'], row['stop_checked'])} ({row['valid']}/{row['stop_checked']}) "
            f"| {row['invalid']} "
            f"| {peers.pct(row['length'], row['accepted'])} ({row['length']}) "
            f"| {row['jsonschema_unsupported']} | {row['error'] + row['other']} |")
    return "\n".join(lines)


def schema_retries(target: peers.Target) -> float | None:
    """gallama's retries counter on /metrics (summed over models); None for a server without it."""
    import httpx

    try:
        text = httpx.get(target.base_url.removesuffix("/v1") + "/metrics", timeout=30).text
    except httpx.HTTPError:
        return None
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("gallama_schema_retries_total")]
    return sum(values) if values else None


def compile_times(schemas: list[Schema]) -> str:
    times = sorted(s.compile_ms for s in schemas if not s.read_error)
    if not times:
        return ""
    at = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    compiled = sum(s.gallama_error is None and not s.read_error for s in schemas)
    return (f"gallama compiles {compiled} of {len(schemas)} schemas (its closest grammar, for the model's tokenizer); "
            f"compile time p50 {at(0.5):.1f} ms, p99 {at(0.99):.1f} ms, max {times[-1]:.1f} ms.")


def problem_lists(label: str, schemas: list[Schema], results: list[Result], show: int = 25) -> str:
    by_name = {(s.category, s.name): s for s in schemas}
    wrongly_rejected = [r for r in results if r.status == "rejected"
                        and by_name[(r.category, r.name)].llguidance_error is None]
    invalid = [r for r in results if r.status == "invalid"]
    errors = [r for r in results if r.status in ("error", "other")]
    lines = [f"{label}: rejected although llguidance compiles them: {len(wrongly_rejected)}"
             + (" (goal: none)" if wrongly_rejected else "")]
    lines += [f"  - {r.category}/{r.name}: {r.detail[:160]}" for r in wrongly_rejected[:show]]
    lines.append(f"{label}: outputs that finished with stop but do not validate: {len(invalid)}")
    lines += [f"  - {r.category}/{r.name}: {r.detail[:160]}" for r in invalid[:show]]
    if errors:
        lines.append(f"{label}: server errors: {len(errors)}")
        lines += [f"  - {r.category}/{r.name}: {r.detail[:160]}" for r in errors[:show]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    peers.add_arguments(parser, DEFAULT_DATA, "folder of JSON schemas by category", max_tokens=600)
    parser.add_argument("--prompt-schema-chars", type=int, default=2000,
                        help="put the schema in the prompt when its compact JSON is at most this long")
    args = parser.parse_args(argv)

    gguf = args.gguf or common.default_model_path()
    tokenizer = llguidance_tokenizer(gguf)
    categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
    schemas = load(args.data, categories, args.limit, tokenizer)
    compiled = sum(s.llguidance_error is None and not s.read_error for s in schemas)
    print(f"{len(schemas)} schemas from {args.data}; llguidance compiles {compiled}", file=sys.stderr)
    print(compile_times(schemas), file=sys.stderr)

    plans = peers.plans(args, gguf)
    reports, problems, saved = [], [], {}
    if not plans:  # llguidance and jsonschema only
        per = collections.defaultdict(collections.Counter)
        for s in schemas:
            per[s.category]["n"] += 1
            per[s.category]["llguidance"] += s.llguidance_error is None and not s.read_error
            per[s.category]["gallama"] += s.gallama_error is None and not s.read_error
            per[s.category]["jsonschema_unsupported"] += s.checker is None
        reports.append("| category | schemas | llguidance compiles | gallama compiles | jsonschema can't check |\n"
                       "|---|---|---|---|---|\n" + "\n".join(
            f"| {c} | {r['n']} | {peers.pct(r['llguidance'], r['n'])} ({r['llguidance']}) "
            f"| {peers.pct(r['gallama'], r['n'])} ({r['gallama']}) | {r['jsonschema_unsupported']} |"
            for c, r in per.items()))
    for label, plan in plans:
        with plan as target:
            started = time.perf_counter()
            retries_before = schema_retries(target)
            results = peers.run_each(
                target, schemas, lambda client, target, s: ask(client, target, s, args.max_tokens, args.prompt_schema_chars),
                args.concurrency, args.timeout, "schemas")
            wall = time.perf_counter() - started
            retries_after = schema_retries(target)
        tokens = sum(r.tokens for r in results)
        retries = ("" if retries_before is None or retries_after is None
                   else f" {retries_after - retries_before:.0f} answers drawn again after breaking their schema.")
        reports.append(table(label, summarize(schemas, results))
                       + f"\n\n{label}: {wall:.0f} s wall time, {tokens} completion tokens (every try).{retries}")
        problems.append(problem_lists(label, schemas, results))
        saved[label] = [r.__dict__ for r in results]

    print("\n\n".join(reports))
    if problems:
        print("\n" + "\n".join(problems))
    if args.save:
        args.save.write_text(json.dumps({"schemas": [{"category": s.category, "name": s.name,
                                                      "llguidance_error": s.llguidance_error,
                                                      "jsonschema": s.draft or s.checker_error} for s in schemas],
                                         "results": saved}, indent=1, ensure_ascii=False))
    if not args.no_docs:
        body = "\n".join([
            f"Latest run: {common.today()}, gallama at `{peers.gallama_head()}`, model `{Path(gguf).name}`, "
            f"schemas `{args.data}` ({len(schemas)} schemas, "
            f"{'first ' + str(args.limit) + ' per category' if args.limit else 'all'}), max_tokens {args.max_tokens}. "
            "\"valid\" counts the outputs that finished with `stop` and that `jsonschema` (with format checks) "
            "accepts; \"out of tokens\" those that hit max_tokens.",
            "",
            f"Machine: {peers.machine_note()}.",
            "",
            compile_times(schemas),
            "",
            "```",
            peers.command_line(),
            "```",
            "",
            "\n\n".join(reports),
            "",
            "```",
            "\n".join(problems) or "(no server measured)",
            "```",
        ])
        common.write_section(TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
