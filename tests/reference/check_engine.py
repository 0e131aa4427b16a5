#!/usr/bin/python3
"""Check the C++ engine CLI against the independent numpy reference (llama_ref.py).

Usage: check_engine.py EORA_BINARY [--model GGUF] [--text FILE] [--max-bytes N]

Checks (stories260K, first 100,000 bytes of TinyStories valid.txt):
  * the reference itself reproduces llama.cpp's llama-perplexity numbers
    (4.0267 at ctx 128, 3.9392 at ctx 256) to 1e-3 relative;
  * `eora perplexity --protocol full --ctx 256 --json` matches the reference
    ppl to 1e-4 relative, with the same scored-token and text-token counts;
  * `eora perplexity --protocol llama-cpp --ctx 128|256 --json` matches the
    llama.cpp numbers to 1e-3 relative and the reference to 1e-4 relative;
  * `eora generate --max-tokens 60` (greedy) starts with llama2.c's text.

Exit codes: 0 pass, 1 mismatch/error, 77 skip (text file absent).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # keep tests/reference free of __pycache__

SKIP = 77

LLAMA_CPP_PPL = {128: 4.0267, 256: 3.9392}   # llama.cpp llama-perplexity, 100,000 bytes
LLAMA_CPP_REL_TOL = 1e-3
REF_REL_TOL = 1e-4
EXPECTED_GENERATION = ("Once upon a time, there was a little girl named Lily. She loved to play "
                       "outside in the park. One day, she saw a big, red ball")


def default_text():
    shared = os.environ.get("EORA_SHARED_DIR")
    if shared:
        return os.path.join(shared, "data", "tinystories", "valid.txt")
    shared_valid = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "tinystories", "valid.txt"))
    if os.path.exists(shared_valid):
        return shared_valid
    # The repository ships the first 100,000 bytes of the same file.
    return os.path.join(REPO, "tests", "data", "tinystories", "valid-100k.txt")


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def run_cli(argv, timeout):
    t0 = time.time()
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out after %ds: %s" % (timeout, " ".join(argv)), time.time() - t0
    except OSError as e:
        return None, "cannot run %s: %s" % (argv[0], e), time.time() - t0
    out = p.stdout.decode("utf-8", errors="replace")
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", errors="replace").strip()
        return None, "exit code %d from %s\n    stderr: %s" % (
            p.returncode, " ".join(argv), err[-2000:]), time.time() - t0
    return out, None, time.time() - t0


def parse_json(out):
    """The last stdout line that parses as a JSON object."""
    for line in reversed(out.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


class Checker:
    def __init__(self):
        self.failures = []
        self.passes = 0

    def ok(self, cond, what, detail=""):
        if cond:
            self.passes += 1
            print("  PASS  %s%s" % (what, (" (" + detail + ")") if detail else ""))
        else:
            self.failures.append(what + (": " + detail if detail else ""))
            print("  FAIL  %s%s" % (what, (": " + detail) if detail else ""))
        return cond

    def close(self, got, want, tol, what):
        r = rel(got, want)
        return self.ok(r <= tol, what, "got %.6f want %.6f rel diff %.2e tol %.0e" % (got, want, r, tol))

    def equal(self, got, want, what):
        return self.ok(got == want, what, "got %r want %r" % (got, want))


def main():
    ap = argparse.ArgumentParser(description="Compare the eora CLI with the numpy reference.")
    ap.add_argument("eora", help="path to the eora CLI binary")
    ap.add_argument("--model", default=os.path.join(REPO, "models", "stories260K", "stories260K.gguf"))
    ap.add_argument("--text", default=None, help="default: $EORA_SHARED_DIR/data/tinystories/valid.txt "
                    "or <repo>/../shared/data/tinystories/valid.txt, else the bundled "
                    "tests/data/tinystories/valid-100k.txt")
    ap.add_argument("--max-bytes", type=int, default=100000)
    ap.add_argument("--timeout", type=int, default=300, help="per engine command, seconds")
    a = ap.parse_args()
    text_path = a.text or default_text()
    if not os.path.isfile(text_path):
        print("SKIP: text file %s not found" % text_path)
        return SKIP
    if not os.path.isfile(a.model):
        print("FAIL: model %s not found" % a.model)
        return 1
    if not (os.path.isfile(a.eora) and os.access(a.eora, os.X_OK)):
        print("FAIL: engine binary %s not found or not executable" % a.eora)
        return 1
    llamacpp_comparable = a.max_bytes == 100000

    import llama_ref as ref

    c = Checker()
    t0 = time.time()
    _, tok, model = ref.load(a.model)
    data = ref.read_text(text_path, a.max_bytes)
    ids = tok.encode(data)
    print("reference: %d bytes -> %d tokens (%.1fs)" % (len(data), len(ids), time.time() - t0))
    refres = {}
    for proto, ctx in (("full", 256), ("llama-cpp", 128), ("llama-cpp", 256)):
        t1 = time.time()
        refres[(proto, ctx)] = r = ref.perplexity(model, tok, ids, ctx, proto)
        print("reference %-9s ctx %3d: ppl %.6f nll %.8f over %d tokens (%.1fs)" % (
            proto, ctx, r["ppl"], r["nll"], r["tokens"], time.time() - t1))
    ref_ids, ref_text = ref.generate(model, tok, 60)

    print("\nreference self-checks:")
    if llamacpp_comparable:
        for ctx, want in sorted(LLAMA_CPP_PPL.items()):
            c.close(refres[("llama-cpp", ctx)]["ppl"], want, LLAMA_CPP_REL_TOL,
                    "reference llama-cpp ctx %d vs llama.cpp" % ctx)
    c.ok(ref_text.startswith(EXPECTED_GENERATION), "reference greedy generation",
         "got %r" % ref_text[:len(EXPECTED_GENERATION) + 20])

    print("\nengine (%s):" % a.eora)
    for proto, ctx in (("full", 256), ("llama-cpp", 128), ("llama-cpp", 256)):
        argv = [a.eora, "perplexity", "--model", a.model, "--text", text_path,
                "--max-bytes", str(a.max_bytes), "--ctx", str(ctx), "--json"]
        if proto != "full":
            argv += ["--protocol", proto]
        out, err, secs = run_cli(argv, a.timeout)
        label = "engine %s ctx %d" % (proto, ctx)
        if err:
            c.ok(False, label, err)
            continue
        j = parse_json(out)
        if j is None or not all(k in j for k in ("tokens", "nll", "ppl")):
            c.ok(False, label + " JSON", "no JSON object with tokens/nll/ppl in stdout: %r" % out[-500:])
            continue
        r = refres[(proto, ctx)]
        print("  (%s: ppl %.6f nll %.8f tokens %s, %.1fs)" % (label, j["ppl"], j["nll"], j["tokens"], secs))
        c.close(float(j["ppl"]), r["ppl"], REF_REL_TOL, label + " ppl vs reference")
        c.equal(int(j["tokens"]), r["tokens"], label + " scored tokens vs reference")
        if "text_tokens" in j:
            c.equal(int(j["text_tokens"]), len(ids), label + " text_tokens vs reference tokenizer")
        if proto == "llama-cpp" and llamacpp_comparable:
            c.close(float(j["ppl"]), LLAMA_CPP_PPL[ctx], LLAMA_CPP_REL_TOL, label + " ppl vs llama.cpp")

    argv = [a.eora, "generate", "--model", a.model, "--max-tokens", "60"]
    out, err, secs = run_cli(argv, a.timeout)
    if err:
        c.ok(False, "engine generate", err)
    else:
        good = c.ok(out.startswith(EXPECTED_GENERATION), "engine greedy generation starts with llama2.c text",
                    "" if out.startswith(EXPECTED_GENERATION) else
                    "\n    got:  %r\n    want: %r..." % (out[:len(EXPECTED_GENERATION) + 20], EXPECTED_GENERATION))
        if good:
            same = out.rstrip("\n") == ref_text
            print("  info  engine generation %s the reference's 60-token text%s" % (
                "equals" if same else "differs from",
                "" if same else ":\n    engine:    %r\n    reference: %r" % (out.rstrip("\n"), ref_text)))

    print("\n%d passed, %d failed (%.1fs)" % (c.passes, len(c.failures), time.time() - t0))
    if c.failures:
        print("FAILURES:")
        for f in c.failures:
            print("  - " + f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
