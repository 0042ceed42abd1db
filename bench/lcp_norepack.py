"""Runs a module (e.g. `llama_cpp.server`) with llama.cpp weight repacking off.

llama.cpp's AMX/repack "extra buffer types" crash multi-token batches on this
machine's CPU, so every engine in the benchmarks runs without weight repacking:
gallama sets `use_extra_bufts = False`, llama-server gets `--no-repack`, and
llama-cpp-python (its server and its `Llama` object) goes through `disable_repack`.

    python bench/lcp_norepack.py llama_cpp.server --model M.gguf ...
"""

from __future__ import annotations

import runpy
import sys


def disable_repack() -> None:
    """Makes llama-cpp-python's model params default to `use_extra_bufts = False`."""
    import llama_cpp.llama_cpp as lib

    if getattr(lib.llama_model_default_params, "_no_repack", False):
        return
    original = lib.llama_model_default_params

    def llama_model_default_params():
        params = original()
        params.use_extra_bufts = False
        return params

    llama_model_default_params._no_repack = True
    lib.llama_model_default_params = llama_model_default_params
    import llama_cpp

    llama_cpp.llama_model_default_params = llama_model_default_params


if __name__ == "__main__":
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    disable_repack()
    runpy.run_module(module, run_name="__main__", alter_sys=True)
