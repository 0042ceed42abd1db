"""Imports run one way: the front above the worker's HTTP layer, above its served models, above the API
shapes, the agentic layer and the spec layer, above the engines; and only engines/ knows an engine library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gallama

ROOT = Path(gallama.__file__).parent
# Top to bottom: a module imports from its own layer or lower ones.
LAYERS = [
    {"__main__", "cli", "router", "download"},  # the front process and the command line
    {"server"},  # a worker's HTTP app and the request core
    {"serving"},  # a worker's served models
    {"protocol"},  # API shapes and errors
    {"agentic"},  # templates, tools, constraints, thinking
    {"config"},  # model specs
    {"engines"},
    {"bundled_models", "__init__"},
]
ENGINE_LIBRARIES = {"llama_cpp", "torch", "infinity_emb", "transformers", "sentence_transformers"}
# What the serving side sees of engines: the interfaces and the registry, never a backend's own modules.
ENGINE_INTERFACE = {"gallama.engines.base", "gallama.engines.embedding.base", "gallama.engines.registry",
                    "gallama.engines.backend"}
SERVING_SIDE = {"server", "serving", "protocol", "agentic"}


def runtime_imports(path: Path) -> list[str]:
    """Every module the file imports when it runs (imports under TYPE_CHECKING left out)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for node in ast.walk(block)}
    names = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield parts[0], path, runtime_imports(path)


def layer(package: str) -> int:
    return next(index for index, packages in enumerate(LAYERS) if package in packages)


def test_every_package_has_a_layer():
    assert {package for package, _, _ in modules()} <= set().union(*LAYERS)


def test_imports_run_downward_only():
    upward = [
        f"{path.relative_to(ROOT)} imports {name}"
        for package, path, names in modules()
        for name in names
        if name.startswith("gallama.") and layer(name.split(".")[1]) < layer(package)
    ]
    assert upward == []


def test_only_engines_import_an_engine_library_and_the_serving_side_only_engine_interfaces():
    found = []
    for package, path, names in modules():
        for name in names:
            if name.split(".")[0] in ENGINE_LIBRARIES and package != "engines":
                found.append(f"{path.relative_to(ROOT)} imports {name}")
            if package in SERVING_SIDE and name.startswith("gallama.engines") and name not in ENGINE_INTERFACE:
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    assert found == []


def test_the_front_loads_none_of_the_chat_core():
    """The front routes and relays; the chat core's libraries (tens of MB each process) stay in the workers."""
    code = ("import sys, gallama.cli, gallama.router.front; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'llguidance', 'jinja2', 'jsonschema', "
            "'llama_cpp', 'torch'}))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert loaded == "[]"
