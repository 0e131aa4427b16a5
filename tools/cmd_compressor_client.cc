// eora upload-calib / create-job / watch-job / list-jobs / cancel-job: a gRPC
// client of eora-compressor (eora.v1.CompressionService), so a person can use
// the service without writing one.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_split.h"
#include "eora/v1/compression.grpc.pb.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "tools/cli_args.h"
#include "tools/cli_common.h"
#include "tools/commands.h"

namespace eora::cli {
namespace {

constexpr char kDefaultTarget[] = "127.0.0.1:50052";

void TargetFlag(Args& args) {
  args.Flag("target", "HOST:PORT", kDefaultTarget, "eora-compressor gRPC address");
  args.Switch("json", "print the result as JSON (protobuf JSON mapping)");
}

// The flags of the commands about one job: --target, --json and --id.
void JobIdFlags(Args& args) {
  TargetFlag(args);
  args.Flag("id", "JOB", "", "job id (required)");
}

std::unique_ptr<eora::v1::CompressionService::Stub> Connect(const Args& args) {
  return eora::v1::CompressionService::NewStub(
      grpc::CreateChannel(args.Str("target"), grpc::InsecureChannelCredentials()));
}

int RpcFail(const std::string& cmd, const grpc::Status& s) {
  return Fail(cmd, absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message()));
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

const char* StateName(eora::v1::JobState s) {
  switch (s) {
    case eora::v1::JOB_STATE_QUEUED:
      return "queued";
    case eora::v1::JOB_STATE_RUNNING:
      return "running";
    case eora::v1::JOB_STATE_SUCCEEDED:
      return "succeeded";
    case eora::v1::JOB_STATE_FAILED:
      return "failed";
    case eora::v1::JOB_STATE_CANCELLED:
      return "cancelled";
    default:
      return "unspecified";
  }
}

bool Terminal(eora::v1::JobState s) {
  return s == eora::v1::JOB_STATE_SUCCEEDED || s == eora::v1::JOB_STATE_FAILED ||
         s == eora::v1::JOB_STATE_CANCELLED;
}

void PrintJobLine(const eora::v1::Job& j) {
  const auto& r = j.request();
  std::printf("%-8s %-10s %-11s %s rank %u -> %s", j.id().c_str(), StateName(j.state()),
              j.progress().stage().c_str(), r.compensation_method().c_str(), r.max_rank(),
              r.target_adapter_id().c_str());
  if (j.progress().num_layers() > 0 && !Terminal(j.state()))
    std::printf(" (layer %u/%u)", j.progress().layer(), j.progress().num_layers());
  if (!j.error().empty()) std::printf("  error: %s", j.error().c_str());
  std::printf("\n");
}

void PrintJobSummary(const eora::v1::Job& j) {
  std::printf("%s %s after %.1fs\n", j.id().c_str(), StateName(j.state()),
              j.progress().elapsed_s());
  if (!j.error().empty()) std::printf("  error: %s\n", j.error().c_str());
  if (!j.adapter_path().empty()) std::printf("  adapter: %s\n", j.adapter_path().c_str());
  if (!j.compressed_base_path().empty())
    std::printf("  compressed base: %s\n", j.compressed_base_path().c_str());
  if (j.quality_profile_size() > 0) {
    std::printf("  held-out ppl: compressed base %.4f, full precision %.4f\n",
                std::exp(j.heldout_nll_compressed()), std::exp(j.heldout_nll_fp()));
    for (const auto& q : j.quality_profile())
      std::printf("  rank %3u: nll %.5f, ppl %.4f\n", q.rank(), q.nll(), q.perplexity());
  }
  for (const auto& t : j.published_to()) std::printf("  published to %s\n", t.c_str());
  for (const auto& w : j.warnings()) std::printf("  warning: %s\n", w.c_str());
}

// Prints a job: as JSON (--json), else with `text` (one line by default).
void PrintJob(const eora::v1::Job& j, bool json,
              void (*text)(const eora::v1::Job&) = PrintJobLine) {
  if (json)
    std::printf("%s\n", Json(j).c_str());
  else
    text(j);
}

// Streams WatchJob to the end; exit 0 if the job succeeded.
int Watch(const std::string& cmd, eora::v1::CompressionService::Stub* stub, const std::string& id,
          bool json) {
  grpc::ClientContext ctx;
  eora::v1::WatchJobRequest req;
  req.set_id(id);
  auto reader = stub->WatchJob(&ctx, req);
  eora::v1::Job j, last;
  bool any = false;
  while (reader->Read(&j)) {
    any = true;
    last = j;
    if (json) continue;
    std::fprintf(stderr, "%s: %s %s", j.id().c_str(), StateName(j.state()),
                 j.progress().stage().c_str());
    if (j.progress().num_layers() > 0)
      std::fprintf(stderr, " layer %u of %u", j.progress().layer(), j.progress().num_layers());
    std::fprintf(stderr, ", %.1fs elapsed", j.progress().elapsed_s());
    if (j.progress().eta_s() > 0) std::fprintf(stderr, ", ETA %.1fs", j.progress().eta_s());
    std::fprintf(stderr, "\n");
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) return RpcFail(cmd, s);
  if (!any) return Fail(cmd, absl::InternalError("the stream ended without a job"));
  PrintJob(last, json, PrintJobSummary);
  return last.state() == eora::v1::JOB_STATE_SUCCEEDED ? 0 : 1;
}

}  // namespace

int RunUploadCalib(int argc, char** argv) {
  const std::string cmd = "eora upload-calib";
  Args args(cmd,
            "Uploads a calibration set to eora-compressor: a text file (documents split on\n"
            "<|endoftext|>) or, for a file ending in .tokens, token ids (one document per\n"
            "line of space-separated ids). Prints the set's id, content hash and token count;\n"
            "uploading the same content again returns the stored set.");
  TargetFlag(args);
  args.Flag("file", "PATH", "", "calibration text or .tokens file (required)");
  args.Flag("name", "NAME", "", "label of the set (default: the file name)");
  args.Flag("tokenizer-model", "ID", "",
            "model whose tokenizer counts the tokens (default: the service's first)");
  args.Flag("chunk-kb", "KB", "1024", "size of each streamed chunk");
  int rc = 0;
  if (!ParseOrExit(args, argc, argv, &rc)) return rc;
  std::string err;
  int64_t chunk_kb;
  if (!args.Int("chunk-kb", &chunk_kb, &err)) return UsageError(cmd, err);
  if (!args.Has("file")) return UsageError(cmd, "--file is required");
  if (chunk_kb < 1 || chunk_kb > 3072) return UsageError(cmd, "--chunk-kb must be in 1..3072");
  const std::string path = args.Str("file");
  std::string data;
  if (absl::Status s = ReadFilePrefix(path, 0, &data); !s.ok()) return Fail(cmd, s);
  const bool ids = path.size() >= 7 && path.compare(path.size() - 7, 7, ".tokens") == 0;
  std::string name = args.Has("name") ? args.Str("name") : path.substr(path.find_last_of('/') + 1);

  auto stub = Connect(args);
  grpc::ClientContext ctx;
  eora::v1::CalibrationSetInfo info;
  auto writer = stub->UploadCalibrationSet(&ctx, &info);
  bool first = true;
  // The first message carries the name and tokenizer model.
  auto send = [&](eora::v1::UploadCalibrationChunk* c) {
    if (first) {
      c->set_name(name);
      c->set_tokenizer_model(args.Str("tokenizer-model"));
      first = false;
    }
    return writer->Write(*c);
  };
  const size_t chunk = static_cast<size_t>(chunk_kb) << 10;
  bool sent_ok = true;
  if (!ids) {
    for (size_t pos = 0; pos < data.size() && sent_ok; pos += chunk) {
      eora::v1::UploadCalibrationChunk c;
      c.set_text(data.substr(pos, chunk));
      sent_ok = send(&c);
    }
  } else {
    // One message per line (document), split when a line is very long.
    for (const auto& line : absl::StrSplit(data, '\n')) {
      if (!sent_ok) break;
      eora::v1::UploadCalibrationChunk c;
      for (const auto& tok : absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty())) {
        char* end = nullptr;
        const std::string t(tok);
        const unsigned long v = std::strtoul(t.c_str(), &end, 10);
        if (*end != '\0' || t[0] == '-')
          return UsageError(cmd, path + ": not a token id: '" + t + "'");
        c.mutable_token_ids()->add_ids(static_cast<uint32_t>(v));
        if (static_cast<size_t>(c.token_ids().ids_size()) * 4 >= chunk) {
          if (!(sent_ok = send(&c))) break;
          c.Clear();
        }
      }
      if (!sent_ok || c.token_ids().ids_size() == 0) continue;
      c.mutable_token_ids()->set_document_end(true);
      sent_ok = send(&c);
    }
  }
  // A failed Write means the server already answered; Finish says why.
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  if (!s.ok()) return RpcFail(cmd, s);
  if (args.Has("json")) {
    std::printf("%s\n", Json(info).c_str());
  } else {
    std::printf("%s %s: %llu bytes, %llu tokens (%s)%s\n", info.id().c_str(), info.name().c_str(),
                static_cast<unsigned long long>(info.bytes()),
                static_cast<unsigned long long>(info.token_count()), info.content_hash().c_str(),
                info.deduplicated() ? ", already stored" : "");
  }
  return 0;
}

int RunCreateJob(int argc, char** argv) {
  const std::string cmd = "eora create-job";
  Args args(cmd,
            "Creates an adapter job on eora-compressor: compress --base-model with --method and\n"
            "--bits (or take an existing --compressed base), fit a --compensation adapter of\n"
            "--rank on the calibration sets, write it to the adapter store as --adapter-id and,\n"
            "with --publish, tell the serving daemons. Prints the job; with --watch, follows it\n"
            "to the end (exit 0 if it succeeded).");
  TargetFlag(args);
  args.Flag("base-model", "ID", "", "a model id of eora-compressor --models (required)");
  args.Flag("method", "NAME", "", "compress: rtn | gptq | sparsegpt | wanda | slim-quant");
  args.Flag("bits", "B", "", "compress: bits per weight, 2..4 (sparsegpt/wanda: 0 = 2:4 only)");
  args.Flag("group-size", "G", "0", "compress: quantization group size (0 = per channel)");
  args.Flag(
      "compressed", "DIR", "",
      "use this existing compressed base directory (on the service's machine) instead of --method");
  args.Flag("compensation", "NAME", "eora", "eora | svd | act-s | slim");
  args.Flag("rank", "R", "", "stored adapter rank (required)");
  args.Flag("adapter-bits", "B", "16", "factor storage: 16, 32, 4 or 3");
  args.Flag("calib", "ID[,ID]", "", "calibration set ids (from upload-calib; required)");
  args.Flag("seq-len", "L", "256", "tokens per calibration sequence");
  args.Flag("num-seqs", "N", "128", "calibration sequences for the fit");
  args.Flag("heldout-seqs", "N", "16", "held-out sequences for the quality profile");
  args.Flag("adapter-id", "ID", "", "adapter id in the store (required)");
  args.Switch("publish", "tell the eora-compressor's --publish-to servers to load the adapter");
  args.Switch("replace", "replace an adapter with the same id");
  args.Switch("watch", "follow the job to the end");
  int rc = 0;
  if (!ParseOrExit(args, argc, argv, &rc)) return rc;
  for (const char* f : {"base-model", "rank", "calib", "adapter-id"})
    if (!args.Has(f)) return UsageError(cmd, std::string("--") + f + " is required");
  if (args.Has("method") == args.Has("compressed"))
    return UsageError(cmd, "give --method (with --bits) or --compressed, not both");
  std::string err;
  int64_t rank, abits, seq_len, num_seqs, heldout, group, bits = 4;
  if (!args.Int("rank", &rank, &err) || !args.Int("adapter-bits", &abits, &err) ||
      !args.Int("seq-len", &seq_len, &err) || !args.Int("num-seqs", &num_seqs, &err) ||
      !args.Int("heldout-seqs", &heldout, &err) || !args.Int("group-size", &group, &err) ||
      (args.Has("bits") && !args.Int("bits", &bits, &err)))
    return UsageError(cmd, err);
  // Range checks are the service's (its errors name the field); only signs here.
  for (int64_t v : {rank, abits, seq_len, num_seqs, heldout, group, bits})
    if (v < 0) return UsageError(cmd, "numeric flags must be >= 0");
  eora::v1::CreateAdapterJobRequest req;
  req.set_base_model(args.Str("base-model"));
  if (args.Has("method")) {
    req.mutable_compression()->set_method(args.Str("method"));
    req.mutable_compression()->set_bits(static_cast<uint32_t>(bits));
    req.mutable_compression()->set_group_size(static_cast<uint32_t>(group));
  } else {
    req.set_compressed_base_path(args.Str("compressed"));
  }
  req.set_compensation_method(args.Str("compensation"));
  req.set_max_rank(static_cast<uint32_t>(rank));
  req.set_adapter_bits(static_cast<uint32_t>(abits));
  for (const auto& id : absl::StrSplit(args.Str("calib"), ',', absl::SkipEmpty()))
    req.add_calibration_set_ids(std::string(id));
  req.set_seq_len(static_cast<uint32_t>(seq_len));
  req.set_num_seqs(static_cast<uint32_t>(num_seqs));
  req.set_heldout_seqs(static_cast<uint32_t>(heldout));
  req.set_target_adapter_id(args.Str("adapter-id"));
  req.set_publish(args.Has("publish"));
  req.set_replace(args.Has("replace"));
  auto stub = Connect(args);
  grpc::ClientContext ctx;
  eora::v1::Job job;
  grpc::Status s = stub->CreateAdapterJob(&ctx, req, &job);
  if (!s.ok()) return RpcFail(cmd, s);
  if (args.Has("watch")) return Watch(cmd, stub.get(), job.id(), args.Has("json"));
  PrintJob(job, args.Has("json"));
  return 0;
}

int RunWatchJob(int argc, char** argv) {
  const std::string cmd = "eora watch-job";
  Args args(cmd,
            "Follows an eora-compressor job (WatchJob): progress lines on stderr (stage, layer i\n"
            "of N, elapsed, ETA), then the result (adapter, quality profile, warnings). Exit 0\n"
            "if the job succeeded, 1 if it failed or was cancelled.");
  JobIdFlags(args);
  int rc = 0;
  if (!ParseOrExit(args, argc, argv, &rc)) return rc;
  if (!args.Has("id")) return UsageError(cmd, "--id is required");
  auto stub = Connect(args);
  return Watch(cmd, stub.get(), args.Str("id"), args.Has("json"));
}

int RunListJobs(int argc, char** argv) {
  const std::string cmd = "eora list-jobs";
  Args args(cmd, "Lists eora-compressor jobs, newest first.");
  TargetFlag(args);
  args.Flag("state", "S[,S]", "",
            "only these states: queued, running, succeeded, failed, cancelled");
  args.Flag("limit", "N", "0", "at most N jobs (0 = all)");
  int rc = 0;
  if (!ParseOrExit(args, argc, argv, &rc)) return rc;
  std::string err;
  int64_t limit;
  if (!args.Int("limit", &limit, &err)) return UsageError(cmd, err);
  if (limit < 0) return UsageError(cmd, "--limit must be >= 0");
  eora::v1::ListJobsRequest req;
  req.set_limit(static_cast<uint32_t>(limit));
  for (const auto& st : absl::StrSplit(args.Str("state"), ',', absl::SkipEmpty())) {
    bool found = false;
    for (int v = eora::v1::JOB_STATE_QUEUED; v <= eora::v1::JOB_STATE_CANCELLED; ++v)
      if (st == StateName(static_cast<eora::v1::JobState>(v))) {
        req.add_states(static_cast<eora::v1::JobState>(v));
        found = true;
      }
    if (!found) return UsageError(cmd, "--state: unknown state '" + std::string(st) + "'");
  }
  auto stub = Connect(args);
  grpc::ClientContext ctx;
  eora::v1::ListJobsResponse resp;
  grpc::Status s = stub->ListJobs(&ctx, req, &resp);
  if (!s.ok()) return RpcFail(cmd, s);
  if (args.Has("json")) {
    std::printf("%s\n", Json(resp).c_str());
  } else {
    for (const auto& j : resp.jobs()) PrintJobLine(j);
    if (resp.jobs().empty()) std::printf("no jobs\n");
  }
  return 0;
}

int RunCancelJob(int argc, char** argv) {
  const std::string cmd = "eora cancel-job";
  Args args(cmd,
            "Cancels an eora-compressor job: a queued one at once, a running one at its next\n"
            "layer boundary (watch-job shows the end).");
  JobIdFlags(args);
  int rc = 0;
  if (!ParseOrExit(args, argc, argv, &rc)) return rc;
  if (!args.Has("id")) return UsageError(cmd, "--id is required");
  auto stub = Connect(args);
  grpc::ClientContext ctx;
  eora::v1::CancelJobRequest req;
  req.set_id(args.Str("id"));
  eora::v1::Job job;
  grpc::Status s = stub->CancelJob(&ctx, req, &job);
  if (!s.ok()) return RpcFail(cmd, s);
  PrintJob(job, args.Has("json"));
  return 0;
}

}  // namespace eora::cli
