"""Whether gallama's grammar for a schema admits the schema's valid instances, and whether its answer
check catches the invalid ones the grammar lets through: on the JSON Schema Test Suite, whose every
case is a schema with instances labelled valid or invalid.

For each schema of the suite's draft folder: gallama's closest grammar (`json_schema_grammar`, exact or
relaxed) is compiled for a byte tokenizer, or refused (with llguidance's reason); each instance,
serialized as gallama's grammar lays JSON out, is fed to it byte by byte; each instance is checked by
`SchemaCheck`. A valid instance the grammar refuses is a soundness gap, unless the same value has
another text the grammar admits (key order, `1.0` written `1`) or it breaks a `format` (gallama
checks formats, which the suite counts as annotations only): those are counted apart. An invalid
instance the grammar admits must fail the check.

  python bench/schema_soundness.py ../shared/data/json-schema-test-suite/tests/draft2020-12
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import llguidance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, peers  # noqa: E402
from gallama.agentic.constraints import JSON_OPTIONS, ConstraintError, json_schema_grammar  # noqa: E402
from gallama.agentic.schema_check import SchemaCheck, SchemaCheckError, _byte_tokenizer  # noqa: E402

TITLE = "Structured output: grammar soundness on the JSON Schema Test Suite (bench/schema_soundness.py)"
DEFAULT_DATA = peers.REPO.parent / "shared" / "data" / "json-schema-test-suite" / "tests" / "draft2020-12"


def as_gallama_writes(value: object) -> str:
    return json.dumps(value, separators=(JSON_OPTIONS["item_separator"], JSON_OPTIONS["key_separator"]),
                      ensure_ascii=False)


def admits(grammar: str, text: str) -> bool:
    matcher = llguidance.LLMatcher(_byte_tokenizer(), grammar, log_level=0)
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


def compiled(schema: object) -> tuple[str | None, str]:
    try:
        grammar = json_schema_grammar(schema)
        matcher = llguidance.LLMatcher(_byte_tokenizer(), grammar, log_level=0)
    except ConstraintError as error:
        return None, str(error)
    return (None, matcher.get_error()) if matcher.is_error() else (grammar, "")


def written_otherwise(value: object) -> bool:
    """Whether the same JSON value has another text: an object's key order, a float with zero fraction."""
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return len(value) > 1 or any(written_otherwise(v) for v in value.values())
    if isinstance(value, list):
        return any(written_otherwise(v) for v in value)
    return False


def measure(folder: Path) -> tuple[dict[str, collections.Counter], list[str]]:
    per: dict[str, collections.Counter] = {}
    gaps: list[str] = []
    for path in sorted(folder.glob("*.json")):
        counts = per.setdefault(path.stem, collections.Counter())
        for group in json.loads(path.read_text()):
            counts["schemas"] += 1
            grammar, reason = compiled(group["schema"])
            try:
                check = SchemaCheck(group["schema"])
            except SchemaCheckError:
                check = None
            if grammar is None:
                counts["refused"] += 1
                gaps.append(f"{path.stem} / {group['description']}: refused: {reason.splitlines()[0][:150]}")
                continue
            for case in group["tests"]:
                text = as_gallama_writes(case["data"])
                admitted = admits(grammar, text)
                if case["valid"]:
                    counts["valid"] += 1
                    counts["valid admitted"] += admitted
                    if admitted:
                        continue
                    if written_otherwise(case["data"]):
                        counts["valid, another text"] += 1
                    elif check is not None and check.violation(text) is not None:
                        counts["valid, format"] += 1
                    else:
                        gaps.append(f"{path.stem} / {group['description']} / {case['description']}: {text[:80]}")
                else:
                    counts["invalid"] += 1
                    if admitted:
                        counts["invalid admitted"] += 1
                        caught = check is not None and check.violation(text) is not None
                        counts["invalid admitted, caught"] += caught
                        if not caught:
                            gaps.append(f"{path.stem} / {group['description']} / {case['description']}: "
                                        f"invalid, admitted and not caught: {text[:80]}")
    return per, gaps


COLUMNS = ("schemas", "refused", "valid", "valid admitted", "valid, another text", "valid, format",
           "invalid", "invalid admitted", "invalid admitted, caught")


def table(per: dict[str, collections.Counter]) -> str:
    total = sum(per.values(), collections.Counter())
    rows = [f"| {name} | " + " | ".join(str(counts[c]) for c in COLUMNS) + " |"
            for name, counts in per.items() if counts["schemas"]]
    rows.append("| **all** | " + " | ".join(f"**{total[c]}**" for c in COLUMNS) + " |")
    return ("| keyword file | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 1) + "\n" + "\n".join(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA, help="a draft folder of the test suite")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    per, gaps = measure(args.data)
    report = table(per)
    listing = "\n".join(f"- {gap}" for gap in gaps)
    print(report + "\n\nRefused schemas and valid instances refused for no other reason:\n" + listing)
    if not args.no_docs:
        common.write_section(TITLE, "\n".join([
            f"Latest run: {common.today()}, gallama at `{peers.gallama_head()}`, suite folder `{args.data}`.",
            "", "```", peers.command_line(), "```", "",
            "\"valid, another text\": refused as written, but the value has a text the grammar admits (key "
            "order, `1.0` as `1`); \"valid, format\": breaks a `format`, which gallama checks and the suite "
            "counts as an annotation. \"invalid admitted, caught\": let through by the grammar, caught by "
            "the answer check.", "", report, "",
            "Refused schemas and valid instances refused for no other reason:", "", listing or "- none"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
