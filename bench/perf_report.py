#!/usr/bin/env python3
"""Runs the engine benchmarks and regenerates the engine section of docs/performance.md.

Usage: /usr/bin/python3 bench/perf_report.py [--build build] [--quick]

Runs `eora bench` over models (stories110M shapes from a seed, and the bundled
stories260K), weight formats, batch sizes and thread counts, plus `eora-membw` for the
machine's read bandwidth, and rewrites the part of docs/performance.md between the
markers <!-- BEGIN engine-bench --> and <!-- END engine-bench --> (other sections are
kept). Prints the table too.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "performance.md")
BEGIN, END = "<!-- BEGIN engine-bench -->", "<!-- END engine-bench -->"

# llama.cpp reference (llama-bench, CPU build, 2 threads, this machine kind, stories110M shapes).
LLAMA_CPP = {"f16_decode": 139, "q4_0_decode": 358, "q4_0_prefill": 1433, "q3_k_m_decode": 299}


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--quick", action="store_true",
                    help="fewer configurations: F16/4/3-bit only, batch 16 at 2 threads only, "
                         "adapter factors 16-bit at rank 16/64/128, 4-/3-bit at rank 64 in groups of 64 and 3-bit per "
                         "row, stories260K at 1 thread")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--note", default="", help="free text added to the report (e.g. what else ran on the machine)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="measure every configuration this many times, round-robin, and report the median "
                         "(a shared machine's speed drifts over seconds; interleaving spreads that over all rows)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    eora = os.path.join(args.build, "bin", "eora")
    membw = os.path.join(args.build, "bin", "eora-membw")

    load_before = os.getloadavg()[0]

    # Configurations are collected first, then measured round-robin --rounds times.
    rows = []
    def bench(label, extra, batch, threads, gen=128, prompt=64, reps=3):
        cmd = [eora, "bench", *extra, "--batch", str(batch), "--threads", str(threads),
               "--prompt-tokens", str(prompt), "--gen-tokens", str(gen), "--decode-context", "0",
               "--reps", str(reps), "--json"]
        r = {"label": label, "batch": batch, "threads": threads, "argv": cmd,
             "cmd": "eora " + " ".join(cmd[1:-1])}
        rows.append(r)
        return r

    formats = [("F16", ["--bits", "16"]), ("4-bit g64", ["--bits", "4"]), ("3-bit g64", ["--bits", "3"]),
               ("2-bit g64", ["--bits", "2"]), ("F32", ["--bits", "32"])]
    if args.quick:
        formats = formats[:3]
    batches = (1, 16)
    threads = (1, 2)
    for name, extra in formats:
        for b in batches:
            for t in threads:
                if args.quick and b > 1 and t == 1:
                    continue
                bench(f"stories110M {name}", ["--synthetic", "stories110m", *extra], b, t,
                      gen=64 if b > 1 else 128)
    # Low-rank overhead on 3-bit decode, batch 1, 2 threads: each run times every
    # repetition with and without the adapter (--compare-base), so the overhead
    # comes from paired times in one process rather than from two runs seconds apart.
    lr_rows = []
    # (factor bits, rank, factor group size): quantized factors in groups of 64, as
    # eora-compressor writes them (eora bench's default), and once per row (0).
    lr_configs = [(16, 16, 64), (16, 64, 64), (16, 128, 64), (4, 64, 64), (3, 64, 64), (3, 64, 0)]
    if not args.quick:
        lr_configs = [(b, r, 64) for b in (16, 4, 3) for r in (16, 64, 128)] + [(3, 64, 0)]
    for lbits, rank, lgroup in lr_configs:
        r = bench(f"3-bit + rank {rank} ({lbits}-bit factors, g{lgroup})",
                  ["--synthetic", "stories110m", "--bits", "3", "--lora-rank", str(rank), "--lora-bits", str(lbits),
                   "--lora-group-size", str(lgroup), "--compare-base"], 1, 2, reps=10)
        lr_rows.append((lbits, rank, lgroup, r))
    # The bundled real model.
    model = os.path.join(REPO, "models", "stories260K", "stories260K.gguf")
    for b in batches:
        for t in ((1,) if args.quick else threads):
            bench("stories260K F32 (real)", ["--model", model], b, t, gen=128, prompt=64)

    bw_runs = {1: [], 2: []}
    for rnd in range(args.rounds):
        for t in (1, 2):
            bw_runs[t].append(run([membw, "--threads", str(t), "--mib", "1024"])["read_gb_s"])
        for r in rows:
            res = run(r["argv"])
            r.setdefault("runs", []).append(res)
            print(f"round {rnd + 1}/{args.rounds} {r['label']:34s} b{r['batch']:<3d} t{r['threads']} "
                  f"prefill {res['prefill_tok_s']:9.1f} decode {res['decode_tok_s']:9.1f} "
                  f"{res['weight_bytes']/1e6:8.2f} MB/tok {res['decode_gb_s']:6.2f} GB/s"
                  + (f" overhead {100 * res['lora_decode_overhead']:+.1f}%" if "lora_decode_overhead" in res else ""),
                  flush=True)
    bw = {t: statistics.median(v) for t, v in bw_runs.items()}
    for r in rows:
        runs = r.pop("runs")
        r.update(runs[0])
        r["all_runs"] = runs
        keys = ["prefill_tok_s", "decode_tok_s", "decode_gb_s"]
        if "lora_decode_overhead" in runs[0]:
            keys += ["base_decode_tok_s", "lora_decode_overhead", "lora_prefill_overhead"]
        for key in keys:
            r[key] = statistics.median(x[key] for x in runs)
            r[key + "_range"] = (min(x[key] for x in runs), max(x[key] for x in runs))

    def find(label, b, t):
        for r in rows:
            if r["label"] == label and r["batch"] == b and r["threads"] == t:
                return r
        return None

    f16 = find("stories110M F16", 1, 2)
    q4 = find("stories110M 4-bit g64", 1, 2)
    q3 = find("stories110M 3-bit g64", 1, 2)

    load_after = os.getloadavg()[0]
    lines = [BEGIN, "", "## Engine on CPU (`eora bench`)", ""]
    lines.append(f"Generated by `bench/perf_report.py` on {datetime.date.today().isoformat()}; "
                 f"machine: {cpu_name()}, {os.cpu_count()} cores, kernels `{rows[0]['isa']}`. "
                 f"Measured read bandwidth (`eora-membw`, 1 GiB, the better of plain loads and loads "
                 f"with a 16 KiB software prefetch): {bw[1]:.1f} GB/s with 1 thread, "
                 f"{bw[2]:.1f} GB/s with 2.")
    lines.append("")
    lines.append(f"1-minute load average {load_before:.1f} before and {load_after:.1f} after the run "
                 f"(a value above the core count means other processes competed for the cores and "
                 f"the numbers understate the engine).")
    if args.note:
        lines.append("")
        lines.append(args.note)
    lines.append("")
    lines.append("Prefill: each sequence feeds 64 random tokens in one step (llama-bench pp64); decode: 128 steps "
                 "(64 at batch 16) of one token per sequence, starting from an empty KV cache (`--decode-context 0`, "
                 "as llama-bench's tg test). Each `eora bench` call reports the median of 3 runs after a warm-up; "
                 f"every configuration was run {args.rounds} times, round-robin over all rows, and the table gives "
                 "the median of those, with the slowest and fastest decode in brackets. `MB/token` is weight bytes read per "
                 "decode step (linear layers, output projection, one embedding row); GB/s = MB/step x steps/s. "
                 "Weights of stories110M shape (dim 768, 12 layers, 12 heads, FFN 2048, vocab 32000) are random "
                 "from a seed (`--synthetic stories110m`); quantized formats are group-wise RTN, group 64, "
                 "F16 scale and min per group, output projection quantized too.")
    lines.append("")
    lines.append("| model | weights | batch | threads | prefill tok/s | decode tok/s [range] | MB/token | decode GB/s |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "rank" in r["label"]:
            continue
        lines.append(f"| {r['label'].split(' ')[0]} | {' '.join(r['label'].split(' ')[1:])} | {r['batch']} | {r['threads']} | "
                     f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.0f} [{r['decode_tok_s_range'][0]:.0f}-{r['decode_tok_s_range'][1]:.0f}] | {r['weight_bytes']/1e6:.2f} | {r['decode_gb_s']:.1f} |")
    lines.append("")
    lines.append("### Against llama.cpp (batch 1, 2 threads, stories110M shapes)")
    lines.append("")
    lines.append("| what | llama.cpp | eora | eora / llama.cpp | target met |")
    lines.append("|---|---:|---:|---:|---|")
    def verdict(ok):
        return "yes" if ok else "**no**"
    def ratio(a, b):
        return f"{a / b:.2f}x"
    if f16 and q4 and q3:
        lines.append(f"| F16 decode tok/s | {LLAMA_CPP['f16_decode']} | {f16['decode_tok_s']:.0f} | {ratio(f16['decode_tok_s'], LLAMA_CPP['f16_decode'])} | {verdict(f16['decode_tok_s'] >= LLAMA_CPP['f16_decode'])} |")
        lines.append(f"| 4-bit decode tok/s (llama.cpp Q4_0) | {LLAMA_CPP['q4_0_decode']} | {q4['decode_tok_s']:.0f} | {ratio(q4['decode_tok_s'], LLAMA_CPP['q4_0_decode'])} | {verdict(q4['decode_tok_s'] >= LLAMA_CPP['q4_0_decode'])} |")
        lines.append(f"| 4-bit prefill tok/s (llama.cpp Q4_0 pp64) | {LLAMA_CPP['q4_0_prefill']} | {q4['prefill_tok_s']:.0f} | {ratio(q4['prefill_tok_s'], LLAMA_CPP['q4_0_prefill'])} | {verdict(q4['prefill_tok_s'] >= LLAMA_CPP['q4_0_prefill'])} |")
        lines.append(f"| 3-bit decode tok/s (llama.cpp Q3_K_M) | {LLAMA_CPP['q3_k_m_decode']} | {q3['decode_tok_s']:.0f} | {ratio(q3['decode_tok_s'], LLAMA_CPP['q3_k_m_decode'])} | 3-bit faster than our 4-bit ({q4['decode_tok_s']:.0f}): {verdict(q3['decode_tok_s'] > q4['decode_tok_s'])} |")
        lines.append("")
        lines.append(f"Decode reads weights at {q4['decode_gb_s']:.1f} GB/s (4-bit) and {f16['decode_gb_s']:.1f} GB/s (F16) "
                     f"against {bw[2]:.1f} GB/s measured with 2 threads: reaching llama.cpp's F16 speed takes "
                     f"{LLAMA_CPP['f16_decode'] * f16['weight_bytes'] / 1e9:.1f} GB/s of weight reads alone.")
    lines.append("")
    lines.append("### Low-rank (EoRA) overhead on 3-bit decode (batch 1, 2 threads)")
    lines.append("")
    lines.append(f"Target: rank-64 overhead at most 10%. Each run (`--compare-base`) times 10 repetitions with "
                 f"the adapter and 10 without, alternating, in one process; its overhead is the median of the "
                 f"per-repetition time ratios. The table gives the median over the {args.rounds} rounds, with the "
                 f"range in brackets. `extra bytes`: the adapter's bytes read per token (A, and the B side's "
                 f"copy) against the 3-bit model's. Quantized factors come in groups of 64 along each rank "
                 f"component (what eora-compressor writes, `--lora-group-size 64`, the default) or one group per "
                 f"rank component (`--lora-group-size 0`).")
    lines.append("")
    lines.append("| factors | rank | decode tok/s with / without | decode overhead [range] | prefill overhead | MB/token | extra bytes |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for lbits, rank, lgroup, r in lr_rows:
        ov = r["lora_decode_overhead"]
        ovs = [x["lora_decode_overhead"] for x in r["all_runs"]]
        extra = r["weight_bytes"] / r["base_weight_bytes"] - 1
        mark = " (**over 10%**)" if rank == 64 and ov > 0.10 else (" (met)" if rank == 64 else "")
        factors = f"{lbits}-bit" if lbits >= 16 else f"{lbits}-bit, " + (f"g{lgroup}" if lgroup else "per row")
        lines.append(f"| {factors} | {rank} | {r['decode_tok_s']:.0f} / {r['base_decode_tok_s']:.0f} | "
                     f"{100*ov:+.1f}% [{100*min(ovs):+.1f}, {100*max(ovs):+.1f}]{mark} | "
                     f"{100*r['lora_prefill_overhead']:+.1f}% | {r['weight_bytes']/1e6:.2f} | {100*extra:+.1f}% |")
    lines.append("")
    lines.append("Commands (each row): `build/bin/eora bench <flags> --json`, for example:")
    lines.append("")
    lines.append("```")
    for r in rows[:2] + [lr_rows[1][-1], lr_rows[-2][-1], lr_rows[-1][-1]]:
        lines.append(r["cmd"])
    lines.append("```")
    lines.append("")
    lines.append(END)
    section = "\n".join(lines)

    if args.no_write:
        print(section)
        return 0
    text = ""
    if os.path.exists(DOC):
        with open(DOC) as f:
            text = f.read()
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        _, post = rest.split(END, 1)
        text = pre + section + post
    else:
        if not text:
            text = "# Performance\n\nEvery number here comes from a script in `bench/`; the machine is named with it.\n\n"
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(DOC, "w") as f:
        f.write(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
