#!/usr/bin/python3
"""End-to-end test of eora-server with a Python client (Debian's python3-grpcio).

Starts the real daemon on 127.0.0.1 (port 0, read from its log), with an adapter
store in a temporary directory, and checks through Python stubs generated here
with grpc_tools.protoc (never committed): greedy tokens equal the offline
engine's (eora_server_test_helper offline), streaming deltas add up to the unary
result, error codes, AdapterService, grpc.health.v1 and server reflection, and
that SIGTERM drains and exits 0.

Exit 0: passed; 1: failed; 77: grpcio or grpc_tools missing (ctest: skipped).
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    import grpc
    from grpc_tools import protoc
except ImportError as e:  # pragma: no cover
    print(f"skipping: {e} (install python3-grpcio python3-grpc-tools)")
    sys.exit(77)

FAILURES = []


def check(cond, what):
    if cond:
        print(f"ok    {what}")
    else:
        print(f"FAIL  {what}")
        FAILURES.append(what)


def gen_stubs(proto_dir, out):
    os.makedirs(out, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      "eora/v1/inference.proto", "eora/v1/adapter.proto"])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({rc})")
    # grpc.health.v1 and reflection: copied under another directory, since a
    # generated "grpc" Python package would be shadowed by grpcio's (the proto
    # packages, and so the wire names, stay grpc.health.v1 / grpc.reflection.v1alpha).
    extra = "/usr/share/grpc-proto/grpc"
    for src, name in [(f"{extra}/health/v1/health.proto", "health.proto"),
                      (f"{extra}/reflection/v1alpha/reflection.proto", "reflection.proto")]:
        if not os.path.exists(src):
            continue
        os.makedirs(f"{out}/eoratest_ext", exist_ok=True)
        shutil.copy(src, f"{out}/eoratest_ext/{name}")
        rc = protoc.main(["protoc", f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}",
                          f"eoratest_ext/{name}"])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {name} ({rc})")
    sys.path.insert(0, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--helper", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--proto-dir", required=True)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="eora-pytest-")
    proc = None
    try:
        gen_stubs(args.proto_dir, os.path.join(work, "stubs"))
        from eora.v1 import adapter_pb2, adapter_pb2_grpc, inference_pb2, inference_pb2_grpc

        store = os.path.join(work, "store")
        os.makedirs(store)
        subprocess.run([args.helper, "make-adapter", f"{store}/task-a", "8", "7"], check=True)
        subprocess.run([args.helper, "make-adapter", f"{store}/task-b", "16", "8"], check=True)
        subprocess.run([args.helper, "make-foreign-adapter", f"{store}/foreign"], check=True)

        log_path = os.path.join(work, "server.log")
        log = open(log_path, "w")
        proc = subprocess.Popen([args.server, "--model", args.model, "--adapter-store", store,
                                 "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                                 "--threads", "1"], stderr=log)
        port = None
        for _ in range(600):
            m = re.search(r"gRPC listening on [^ ]*:(\d+)", open(log_path).read())
            if m:
                port = int(m.group(1))
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        if port is None:
            print(open(log_path).read())
            raise RuntimeError("server did not start")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        inf = inference_pb2_grpc.InferenceServiceStub(channel)
        ad = adapter_pb2_grpc.AdapterServiceStub(channel)

        def offline(prompt, adapter_dir, rank, n):
            out = subprocess.run([args.helper, "offline", prompt, adapter_dir, str(rank), str(n)],
                                 check=True, capture_output=True, text=True).stdout.split()
            return [int(t) for t in out]

        # Greedy tokens equal the offline engine's, for the base model and adapters/ranks.
        for adapter, rank in [("", 0), ("task-a", 8), ("task-a", 3), ("task-b", 0), ("task-b", 12)]:
            r = inf.Generate(inference_pb2.GenerateRequest(
                prompt="Once upon a time", adapter_id=adapter, rank=rank, max_new_tokens=20),
                timeout=60)
            ref = offline("Once upon a time", f"{store}/{adapter}" if adapter else "-", rank, 20)
            check(list(r.token_ids) == ref, f"Generate tokens == offline ({adapter or 'base'}, rank {rank})")
            want_rank = rank if rank else (8 if adapter == "task-a" else 16 if adapter else 0)
            check(r.rank_used == want_rank, f"rank_used {r.rank_used} == {want_rank}")
            check(r.finish_reason in ("length", "stop"), f"finish_reason '{r.finish_reason}'")

        # Streaming deltas add up to the unary response.
        req = inference_pb2.GenerateRequest(prompt="The cat", adapter_id="task-b", rank=4,
                                            max_new_tokens=16)
        unary = inf.Generate(req, timeout=60)
        toks, text, last = [], "", None
        for m in inf.GenerateStream(req, timeout=60):
            toks += list(m.token_ids)
            text += m.text
            last = m
        check(toks == list(unary.token_ids) and text == unary.text, "stream deltas == unary result")
        check(last is not None and last.finish_reason != "" and last.generated_tokens == len(toks),
              "last stream message carries finish_reason and counts")

        # Error codes.
        def code_of(**kw):
            try:
                inf.Generate(inference_pb2.GenerateRequest(**kw), timeout=30)
                return grpc.StatusCode.OK, ""
            except grpc.RpcError as e:
                return e.code(), e.details()
        c, _ = code_of(adapter_id="nope", prompt="x")
        check(c == grpc.StatusCode.NOT_FOUND, f"unknown adapter -> NOT_FOUND ({c})")
        c, d = code_of(adapter_id="task-a", rank=99, prompt="x")
        check(c == grpc.StatusCode.INVALID_ARGUMENT and "rank" in d, f"rank too high -> INVALID_ARGUMENT ({d})")
        c, d = code_of(adapter_id="../../etc/passwd", prompt="x")
        check(c == grpc.StatusCode.INVALID_ARGUMENT and "adapter_id" in d, f"path in id -> INVALID_ARGUMENT ({d})")
        c, d = code_of(prompt="x", temperature=-2)
        check(c == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in d, f"temperature -> INVALID_ARGUMENT ({d})")
        c, _ = code_of(adapter_id="foreign", prompt="x")
        check(c == grpc.StatusCode.FAILED_PRECONDITION, f"foreign adapter -> FAILED_PRECONDITION ({c})")

        # AdapterService.
        lr = ad.LoadAdapter(adapter_pb2.LoadAdapterRequest(adapter_id="task-a"), timeout=30)
        check(lr.adapter.state == adapter_pb2.ADAPTER_STATE_READY and lr.adapter.stored_rank == 8,
              "LoadAdapter -> READY, stored_rank 8")
        v1 = lr.adapter.version
        lr2 = ad.LoadAdapter(adapter_pb2.LoadAdapterRequest(adapter_id="task-a", replace=True), timeout=30)
        check(lr2.adapter.version > v1, "LoadAdapter(replace) gives a new version")
        info = ad.GetAdapter(adapter_pb2.GetAdapterRequest(adapter_id="task-b"), timeout=10)
        check(info.tier == adapter_pb2.TIER_DEVICE and info.bytes > 0 and len(info.quality_profile) > 0,
              "GetAdapter: tier, bytes, quality profile")
        lst = ad.ListAdapters(adapter_pb2.ListAdaptersRequest(include_store=True), timeout=10)
        check({"task-a", "task-b", "foreign"} <= {a.adapter_id for a in lst.adapters}, "ListAdapters(include_store)")
        ad.UnloadAdapter(adapter_pb2.UnloadAdapterRequest(adapter_id="task-a"), timeout=30)
        info = ad.GetAdapter(adapter_pb2.GetAdapterRequest(adapter_id="task-a"), timeout=10)
        check(info.state == adapter_pb2.ADAPTER_STATE_ON_DISK, "UnloadAdapter -> ON_DISK")

        # Health and reflection.
        try:
            from eoratest_ext import health_pb2, health_pb2_grpc
            h = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            check(h.status == health_pb2.HealthCheckResponse.SERVING, "grpc.health.v1 Check -> SERVING")
        except ImportError:
            print("skip  grpc.health.v1 (no health.proto on this machine)")
        try:
            from eoratest_ext import reflection_pb2, reflection_pb2_grpc
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            resp = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                  timeout=10))
            names = {s.name for s in resp[0].list_services_response.service}
            check({"eora.v1.InferenceService", "eora.v1.AdapterService"} <= names,
                  f"reflection lists the services ({sorted(names)})")
        except ImportError:
            print("skip  reflection (no reflection.proto on this machine)")

        # SIGTERM drains and exits 0.
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        check(rc == 0, f"SIGTERM -> exit 0 (got {rc})")
        proc = None
        text = open(log_path).read()
        check("draining" in text, "log says it drains")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
