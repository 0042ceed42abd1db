#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` from the llama.cpp sources vendored in the
# llama-cpp-python sdist of the installed version, and caches the binary outside
# the repository. Prints the binary's path. Skips everything when it is cached.
#   bench/build_llama_server.sh            # uses `python` from PATH (activate .venv first)
#   PYTHON=/path/to/python bench/build_llama_server.sh
set -euo pipefail

PYTHON="${PYTHON:-python}"
VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
CACHE_DIR="${GALLAMA_BENCH_CACHE:-$HOME/.cache/gallama-bench}"
BINARY="$CACHE_DIR/llama-server-$VERSION"

if [[ -x "$BINARY" ]]; then
    echo "$BINARY"
    exit 0
fi

mkdir -p "$CACHE_DIR"
WORK="$(mktemp -d "$CACHE_DIR/build-$VERSION.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "downloading the llama-cpp-python $VERSION sdist" >&2
"$PYTHON" -m pip download --quiet --no-binary :all: --no-deps --dest "$WORK" "llama-cpp-python==$VERSION" >&2
tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"

echo "building llama-server (several minutes on 2 cores)" >&2
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$WORK/build" --target llama-server -j2 >&2

cp "$WORK/build/bin/llama-server" "$BINARY.tmp"
mv "$BINARY.tmp" "$BINARY"
echo "$BINARY"
