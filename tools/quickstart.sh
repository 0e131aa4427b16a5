#!/usr/bin/env bash
# Sets up a Debian 12 machine, builds EoRA Serve and runs the main job on the
# bundled stories260K model: greedy generation from BOS, then perplexity on the
# bundled TinyStories slice.
# Usage: bash tools/quickstart.sh   (as root, or a user with sudo)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}

bash tools/install-deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)"

MODEL=models/stories260K/stories260K.gguf
echo "== eora generate --model $MODEL --max-tokens 100"
"$BUILD_DIR/bin/eora" generate --model "$MODEL" --max-tokens 100
echo "== eora perplexity --model $MODEL --text tests/data/tinystories/valid-100k.txt --ctx 256"
"$BUILD_DIR/bin/eora" perplexity --model "$MODEL" --text tests/data/tinystories/valid-100k.txt --ctx 256
