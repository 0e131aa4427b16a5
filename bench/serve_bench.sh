#!/bin/bash
# Batching gain of eora-server on the bundled stories260K model: starts the server
# on free ports, runs `eora bench-serve` closed loop with 1 and 16 streams (unary
# Generate and GenerateStream), prints one table row per run ("vs first": its tok/s
# over the first streams value's in the same repeat), and stops the server.
#
#   bench/serve_bench.sh [BUILD_DIR] [SERVER_THREADS] [REPEATS]
#
# Environment: REQUESTS (128), MAX_NEW (128), STREAMS ("1 16"), RPCS ("unary stream"),
# EXTRA_SERVER_FLAGS, EXTRA_BENCH_FLAGS.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
threads=${2:-1}
repeats=${3:-1}
requests=${REQUESTS:-128}
max_new=${MAX_NEW:-128}
streams_list=${STREAMS:-1 16}
rpcs=${RPCS:-unary stream}
model=$here/models/stories260K/stories260K.gguf
tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/store"
"$build/bin/eora-server" --model "$model" --adapter-store "$tmp/store" --listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 --threads "$threads" ${EXTRA_SERVER_FLAGS:-} >"$tmp/server.log" 2>&1 &
server_pid=$!
port=
for _ in $(seq 1 200); do
  port=$(grep -o 'gRPC listening on [0-9.]*:[0-9]*' "$tmp/server.log" 2>/dev/null | head -1 | sed 's/.*://') || true
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "$port" ] || { echo "server did not start:"; cat "$tmp/server.log"; exit 1; }
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); server --threads $threads; $requests requests x $max_new tokens"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime, clock ticks
hz=$(getconf CLK_TCK)
echo "| RPC | streams | output tok/s | vs first | TTFT p50 / p99 ms | TPOT p50 / p99 ms | server CPU us/token | load avg |"
echo "|---|---:|---:|---:|---|---|---:|---|"
for rep in $(seq 1 "$repeats"); do
  for rpc in $rpcs; do
    first=  # tok/s of the first streams value of this repeat and RPC ("vs first": the batching gain)
    for s in $streams_list; do
      flag=; name=GenerateStream
      [ "$rpc" = unary ] && flag=--unary && name="Generate (unary)"
      c0=$(cpu_ticks "$server_pid")
      "$build/bin/eora" bench-serve --target "127.0.0.1:$port" --streams "$s" --requests "$requests" \
        --max-new-tokens "$max_new" --ignore-eos $flag --json ${EXTRA_BENCH_FLAGS:-} >"$tmp/out.json"
      c1=$(cpu_ticks "$server_pid")
      load=$(cut -d' ' -f1 /proc/loadavg)
      [ -n "$first" ] || first=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["output_tokens_per_s"])' "$tmp/out.json")
      /usr/bin/python3 - "$tmp/out.json" "$name" "$s" "$load" "$((c1 - c0))" "$hz" "$first" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
err = sum(j["errors"].values()) if j["errors"] else 0
cpu_us = int(sys.argv[5]) / int(sys.argv[6]) * 1e6 / max(1, j["output_tokens"])
first = float(sys.argv[7])
print("| %s | %s | %.0f | %.2fx | %.2f / %.2f | %.3f / %.3f | %.1f | %s |%s" % (
    sys.argv[2], sys.argv[3], j["output_tokens_per_s"], j["output_tokens_per_s"] / first if first > 0 else 0,
    j["ttft_ms"]["p50"], j["ttft_ms"]["p99"], j["tpot_ms"]["p50"], j["tpot_ms"]["p99"], cpu_us, sys.argv[4],
    " ERRORS %d" % err if err else ""))
PY
    done
  done
done
