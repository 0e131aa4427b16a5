#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <thread>

#include "engine/model.h"
#include "engine/model_loader.h"
#include "engine/synthetic.h"
#include "tools/cli_args.h"
#include "tools/cli_common.h"
#include "tools/kv_dtype_flag.h"
#include "tools/commands.h"

namespace eora::cli {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// One lane of the benchmark: a model on its own thread pool, its KV cache and
// its share of the sequences.
struct BenchLane {
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<Model> model;
  std::unique_ptr<KvCache> cache;
  int64_t batch = 0;
  int64_t first = 0;  // index of the lane's first sequence in the whole batch
  std::mt19937 rng;
  std::vector<float> logits;
  std::vector<KvSequence> seqs;
  std::vector<std::vector<int>> prompts;
  std::vector<SequenceChunk> chunks;
  absl::Status status;
};

// Fresh sequences of `len` random tokens in every chunk of the lane; sequence b of
// the whole batch uses adapters[b % size] (none when `adapters` is empty).
void NewPrompts(BenchLane* l, int64_t len, const std::vector<const LowRankAdapter*>& adapters, int rank,
                int vocab) {
  std::uniform_int_distribution<int> tok(3, vocab - 1);
  for (auto& s : l->seqs) l->cache->Free(&s);
  l->seqs.clear();
  l->chunks.clear();
  l->prompts.assign(static_cast<size_t>(l->batch), {});
  l->seqs.reserve(static_cast<size_t>(l->batch));
  for (int64_t b = 0; b < l->batch; ++b) {
    for (int64_t i = 0; i < len; ++i) l->prompts[b].push_back(tok(l->rng));
    l->seqs.push_back(l->cache->NewSequence());
    const LowRankAdapter* adapter =
        adapters.empty() ? nullptr : adapters[static_cast<size_t>((l->first + b) % static_cast<int64_t>(adapters.size()))];
    l->chunks.push_back({&l->seqs.back(), l->prompts[b], adapter, adapter ? rank : 0, LogitsMode::kLast});
  }
}

}  // namespace

int RunBench(int argc, char** argv) {
  const std::string cmd = "eora bench";
  Args args(cmd,
            "Measures prefill and decode speed. Prefill: each of --batch sequences feeds\n"
            "--prompt-tokens random tokens in one forward step. Decode: then --gen-tokens\n"
            "steps of one token per sequence, after the prompt or (--decode-context) in\n"
            "fresh sequences. Reports the median of --reps runs. With --lanes L, L independent\n"
            "models (shared weights) on threads / L threads each decode batch / L sequences\n"
            "at the same time, as eora-server's lanes do; the rates are of all lanes together.\n"
            "weight_bytes is the bytes of weights (and adapter factors) read per decode step.\n"
            "With --lora-rank R and --compare-base, every repetition runs twice, with and\n"
            "without the adapter (the order alternates), and the overhead is the median of\n"
            "the per-repetition time ratios: the two sides share the process, the weights\n"
            "and the moment, so a shared machine's drift cancels out. --lora-adapters N gives\n"
            "the sequences N different adapters in turn (a multi-adapter batch, as a server\n"
            "batches requests for different tasks).");
  args.Flag("model", "PATH", "", "a .gguf file or Hugging Face directory (or use --synthetic)");
  args.Flag("synthetic", "NAME", "", "random weights with the shapes of stories260k, stories110m, llama2-7b or llama3-8b");
  args.Flag("bits", "32|16|4|3|2", "", "weight storage: 32/16 dense float, 4/3/2 group-wise quantized (RTN); default: the model file's, or 16 for --synthetic");
  args.Flag("group-size", "G", "64", "quantization group size (multiple of 32; 0 = per channel)");
  args.Switch("sparse24", "prune linear weights to 2:4 (magnitude) before storing them");
  args.Flag("lora-rank", "R", "0", "attach a random rank-R adapter to all linear layers; 0 = none");
  args.Flag("lora-bits", "32|16|4|3|2", "16", "adapter factor storage: 32/16 dense float, 4/3/2 quantized (RTN)");
  args.Flag("lora-adapters", "N", "1", "with --lora-rank: N random adapters, sequence b using adapter b mod N "
                                       "(at most --batch)");
  args.Flag("lora-group-size", "G", std::to_string(kFactorGroupSize),
            "group size of quantized factors (multiple of 32; 0 = one group per rank component); "
            "the default is what eora-compressor writes");
  args.Switch("compare-base", "with --lora-rank: also time every repetition without the adapter and "
                              "report the adapter's overhead from the paired times");
  args.Flag("batch", "B", "1", "sequences decoded together");
  args.Flag("threads", "N", DefaultThreadsString(), "worker threads");
  args.Flag("lanes", "L", "1", "independent models side by side (at most --threads and --batch)");
  args.Flag("prompt-tokens", "P", "64", "prompt length per sequence");
  args.Flag("gen-tokens", "G", "128", "decode steps");
  args.Flag("decode-context", "C", "-1",
            "tokens already in each sequence's KV cache when decode starts: -1 = the prompt "
            "(decode continues after prefill); 0 = none, as llama-bench's tg test; C > 0 = a fresh "
            "sequence after an untimed prefill of C tokens");
  args.Flag("reps", "N", "3", "timed repetitions after 0.3 s of warm-up (median reported)");
  args.Flag("seed", "S", "1", "seed of synthetic weights and random prompts");
  DeclareKvDTypeFlag(args);
  args.Switch("json", "print one JSON object instead of a table row");
  int rc = 0;
  if (!ParseOrExit(args, argc, argv, &rc)) return rc;
  std::string err;
  int64_t group, lora_group, lora_count, rank, lora_bits, batch, threads, lanes, ptoks, gtoks, reps, seed, dctx, bits = 0;
  if (!args.Int("group-size", &group, &err) || !args.Int("lora-rank", &rank, &err) ||
      !args.Int("lora-bits", &lora_bits, &err) || !args.Int("lora-group-size", &lora_group, &err) ||
      !args.Int("lora-adapters", &lora_count, &err) ||
      !args.Int("batch", &batch, &err) ||
      !args.Int("threads", &threads, &err) || !args.Int("lanes", &lanes, &err) ||
      !args.Int("prompt-tokens", &ptoks, &err) ||
      !args.Int("gen-tokens", &gtoks, &err) || !args.Int("reps", &reps, &err) ||
      !args.Int("decode-context", &dctx, &err) ||
      !args.Int("seed", &seed, &err) || (args.Has("bits") && !args.Int("bits", &bits, &err)))
    return UsageError(cmd, err);
  if (args.Has("model") == args.Has("synthetic"))
    return UsageError(cmd, "give exactly one of --model and --synthetic");
  if (args.Has("bits") && bits != 32 && bits != 16 && bits != 4 && bits != 3 && bits != 2)
    return UsageError(cmd, "--bits must be 32, 16, 4, 3 or 2 (8-bit storage is not implemented)");
  if (batch < 1 || threads < 1 || ptoks < 1 || gtoks < 0 || reps < 1 || rank < 0)
    return UsageError(cmd, "--batch, --threads, --prompt-tokens, --reps must be >= 1; "
                           "--gen-tokens, --lora-rank >= 0");
  if (dctx < -1) return UsageError(cmd, "--decode-context must be -1, 0 or a token count");
  if (lanes < 1 || lanes > threads || lanes > batch)
    return UsageError(cmd, "--lanes must be between 1 and both --threads and --batch");
  const bool compare = args.Has("compare-base");
  if (compare && rank == 0) return UsageError(cmd, "--compare-base needs --lora-rank R > 0");
  if (lora_count < 1 || lora_count > batch)
    return UsageError(cmd, "--lora-adapters must be between 1 and --batch");
  if (lora_count > 1 && rank == 0) return UsageError(cmd, "--lora-adapters needs --lora-rank R > 0");
  if (group < 0 || group % 32 != 0) return UsageError(cmd, "--group-size must be 0 or a multiple of 32");
  if (lora_bits != 32 && lora_bits != 16 && lora_bits != 4 && lora_bits != 3 && lora_bits != 2)
    return UsageError(cmd, "--lora-bits must be 32, 16, 4, 3 or 2");
  if (lora_group < 0 || lora_group % 32 != 0)
    return UsageError(cmd, "--lora-group-size must be 0 or a multiple of 32");
  const absl::StatusOr<KvDType> kv_dtype = KvDTypeFlag(args);
  if (!kv_dtype.ok()) return UsageError(cmd, std::string(kv_dtype.status().message()));

  std::shared_ptr<const ModelWeights> weights;
  WeightStorage storage;
  storage.group_size = static_cast<int>(group);
  storage.sparse24 = args.Has("sparse24");
  std::string name;
  if (args.Has("synthetic")) {
    name = args.Str("synthetic");
    auto cfg = SyntheticConfig(name);
    if (!cfg.ok()) return UsageError(cmd, std::string(cfg.status().message()));
    storage.bits = args.Has("bits") ? static_cast<int>(bits) : 16;
    std::fprintf(stderr, "bench: generating %s weights (bits %d) ...\n", name.c_str(), storage.bits);
    auto w = MakeSyntheticModel(*cfg, storage, static_cast<uint64_t>(seed));
    if (!w.ok()) return Fail(cmd, w.status());
    weights = *w;
  } else {
    name = args.Str("model");
    auto w = LoadModel(name);
    if (!w.ok()) return Fail(cmd, w.status());
    auto owned = std::make_shared<ModelWeights>(std::move(*w));
    if (args.Has("bits") || storage.sparse24) {
      storage.bits = args.Has("bits") ? static_cast<int>(bits) : 32;
      auto conv = ConvertModelStorage(*owned, storage);
      if (!conv.ok()) return Fail(cmd, conv.status());
      weights = *conv;
    } else {
      weights = owned;
    }
  }
  const ModelConfig& c = weights->config;
  const int64_t decode_start = dctx < 0 ? ptoks : dctx;
  if (ptoks > c.max_seq_len || decode_start + gtoks > c.max_seq_len)
    return UsageError(cmd, "--prompt-tokens, or the decode context plus --gen-tokens, exceeds the "
                           "model context of " + std::to_string(c.max_seq_len));
  std::vector<std::shared_ptr<const LowRankAdapter>> adapters;
  std::vector<const LowRankAdapter*> with_adapters;  // what the sequences use with the adapters
  for (int64_t i = 0; rank > 0 && i < lora_count; ++i) {
    WeightStorage fs;
    fs.bits = static_cast<int>(lora_bits);
    fs.group_size = static_cast<int>(lora_group);
    auto a = MakeRandomAdapter("bench-" + std::to_string(i), c, static_cast<int>(rank), fs,
                               static_cast<uint64_t>(seed) + 7 + static_cast<uint64_t>(i));
    if (!a.ok()) return Fail(cmd, a.status());
    adapters.push_back(*a);
    with_adapters.push_back(adapters.back().get());
  }

  std::vector<BenchLane> ls(static_cast<size_t>(lanes));
  for (int64_t i = 0; i < lanes; ++i) {
    BenchLane& l = ls[i];
    l.batch = batch / lanes + (i < batch % lanes ? 1 : 0);
    l.first = i == 0 ? 0 : ls[i - 1].first + ls[i - 1].batch;
    l.pool = std::make_unique<ThreadPool>(static_cast<int>(threads / lanes));
    l.model = std::make_unique<Model>(weights, l.pool.get());
    l.cache = std::make_unique<KvCache>(
        c, l.batch * (std::max(ptoks, decode_start + gtoks) + 2 * KvCache::kBlockTokens), *kv_dtype);
    l.rng.seed(static_cast<uint32_t>(seed + 1000 * i));
  }
  // Timings per side: [0] with the adapter (or the only side), [1] without it.
  std::vector<double> prefill_s[2], decode_s[2];
  // Warm-up runs (not timed) until 0.3 s have passed: caches, page faults, clock
  // speed, and the BLAS threads that the linked compressor library spins up at
  // process start (they busy-wait ~0.1 s on the other cores before sleeping).
  const auto warm_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  bool warming = true;
  const int sides = compare ? 2 : 1;
  for (int64_t step = 0; step < reps * sides; ++step) {
    const int64_t rep = step / sides;
    // With --compare-base the side order alternates per repetition: A B, B A, ...
    const int side = sides == 1 ? 0 : static_cast<int>((step + rep) % 2);
    static const std::vector<const LowRankAdapter*> kNone;
    const std::vector<const LowRankAdapter*>& use = side == 0 ? with_adapters : kNone;
    const int use_rank = side == 0 ? static_cast<int>(rank) : 0;
    // Each lane runs the phases on its own thread (lane 0 on this one); the
    // barriers line the phases up, and this thread takes the times at them.
    std::chrono::steady_clock::time_point t0, tp, td, t2;
    std::barrier sync(static_cast<std::ptrdiff_t>(lanes));
    auto run = [&](BenchLane* l, bool timer) {
      NewPrompts(l, ptoks, use, use_rank, c.vocab_size);
      sync.arrive_and_wait();
      if (timer) t0 = std::chrono::steady_clock::now();
      if (l->status.ok()) l->status = l->model->Forward(l->chunks, l->cache.get(), &l->logits);
      sync.arrive_and_wait();
      if (timer) tp = td = std::chrono::steady_clock::now();
      if (dctx >= 0) {
        // Decode in fresh sequences holding dctx tokens (prefilled untimed).
        NewPrompts(l, dctx, use, use_rank, c.vocab_size);
        if (dctx > 0 && l->status.ok())
          l->status = l->model->Forward(l->chunks, l->cache.get(), &l->logits);
        sync.arrive_and_wait();
        if (timer) td = std::chrono::steady_clock::now();
      }
      std::uniform_int_distribution<int> tok(3, c.vocab_size - 1);
      std::vector<int> next(static_cast<size_t>(l->batch));
      for (int64_t g = 0; g < gtoks && l->status.ok(); ++g) {
        for (int64_t b = 0; b < l->batch; ++b) {
          next[b] = tok(l->rng);
          l->chunks[b].tokens = std::span<const int>(&next[b], 1);
        }
        l->status = l->model->Forward(l->chunks, l->cache.get(), &l->logits);
      }
      sync.arrive_and_wait();
      if (timer) t2 = std::chrono::steady_clock::now();
      for (auto& s : l->seqs) l->cache->Free(&s);
      l->seqs.clear();
    };
    std::vector<std::thread> others;
    for (int64_t i = 1; i < lanes; ++i) others.emplace_back(run, &ls[i], false);
    run(&ls[0], true);
    for (auto& t : others) t.join();
    for (const BenchLane& l : ls)
      if (!l.status.ok()) return Fail(cmd, l.status);
    if (warming) {
      // Warm up whole repetitions (both sides).
      if (step % sides == sides - 1) {
        warming = std::chrono::steady_clock::now() < warm_until;
        step = -1;
      }
      continue;
    }
    prefill_s[side].push_back(Seconds(t0, tp));
    decode_s[side].push_back(Seconds(td, t2));
  }
  const double pre = static_cast<double>(batch * ptoks) / Median(prefill_s[0]);
  const double dec = gtoks > 0 ? static_cast<double>(batch * gtoks) / Median(decode_s[0]) : 0.0;
  // Paired comparison: the median over repetitions of (time with) / (time without) - 1.
  auto paired_overhead = [&](const std::vector<double>* t) {
    std::vector<double> ratio;
    for (size_t i = 0; i < t[0].size(); ++i) ratio.push_back(t[0][i] / t[1][i] - 1.0);
    return Median(ratio);
  };
  double base_pre = 0, base_dec = 0, pre_over = 0, dec_over = 0;
  if (compare) {
    base_pre = static_cast<double>(batch * ptoks) / Median(prefill_s[1]);
    base_dec = gtoks > 0 ? static_cast<double>(batch * gtoks) / Median(decode_s[1]) : 0.0;
    pre_over = paired_overhead(prefill_s);
    dec_over = gtoks > 0 ? paired_overhead(decode_s) : 0.0;
  }
  // Per lane step: the weights, and each adapter the lane's sequences use (every
  // lane holds consecutive sequences); averaged over the lanes.
  size_t lane_adapter_bytes = 0;
  for (const BenchLane& l : ls)
    for (int64_t i = 0; i < std::min<int64_t>(l.batch, lora_count) && !adapters.empty(); ++i)
      lane_adapter_bytes += adapters[static_cast<size_t>((l.first + i) % lora_count)]->BytesPerToken(rank);
  const size_t wbytes = weights->DecodeBytesPerToken() + lane_adapter_bytes / static_cast<size_t>(lanes);
  // Every lane reads the weights once per step of its own.
  const double steps_per_s = dec / static_cast<double>(batch) * static_cast<double>(lanes);
  const double gbs = steps_per_s * static_cast<double>(wbytes) / 1e9;
  const std::string fmt = weights->layers[0].linear[0]->Describe();
  if (args.Has("json")) {
    std::printf(
        "{\"model\": \"%s\", \"format\": \"%s\", \"batch\": %lld, \"threads\": %lld, \"lanes\": %lld, "
        "\"prompt_tokens\": %lld, \"gen_tokens\": %lld, \"decode_context\": %lld, \"lora_rank\": %lld, \"lora_bits\": %lld, \"lora_group_size\": %lld, \"lora_adapters\": %lld, "
        "\"prefill_tok_s\": %.2f, \"decode_tok_s\": %.2f, \"weight_bytes\": %zu, "
        "\"decode_gb_s\": %.3f, \"kv_dtype\": \"%s\", \"isa\": \"%s\"",
        name.c_str(), fmt.c_str(), static_cast<long long>(batch), static_cast<long long>(threads),
        static_cast<long long>(lanes), static_cast<long long>(ptoks), static_cast<long long>(gtoks),
        static_cast<long long>(decode_start), static_cast<long long>(rank),
        static_cast<long long>(lora_bits), static_cast<long long>(lora_group), static_cast<long long>(rank > 0 ? lora_count : 0), pre, dec, wbytes, gbs, KvDTypeName(*kv_dtype), KernelIsaName());
    if (compare)
      std::printf(", \"base_prefill_tok_s\": %.2f, \"base_decode_tok_s\": %.2f, \"base_weight_bytes\": %zu, "
                  "\"lora_prefill_overhead\": %.4f, \"lora_decode_overhead\": %.4f",
                  base_pre, base_dec, weights->DecodeBytesPerToken(), pre_over, dec_over);
    std::printf("}\n");
  } else {
    const std::string lane_col = lanes > 1 ? " lanes " + std::to_string(lanes) : "";
    std::printf("%-14s %-12s batch %-3lld threads %-2lld%s rank %-4lld prefill %9.1f tok/s  decode %9.1f tok/s  weights %8.2f MB/token  %6.2f GB/s  [%s]\n",
                name.c_str(), fmt.c_str(), static_cast<long long>(batch),
                static_cast<long long>(threads), lane_col.c_str(), static_cast<long long>(rank), pre, dec,
                static_cast<double>(wbytes) / 1e6, gbs, KernelIsaName());
    if (compare)
      std::printf("%-14s without the adapter (paired)  prefill %9.1f tok/s  decode %9.1f tok/s  "
                  "overhead: prefill %+.1f%%  decode %+.1f%% (median of %lld paired repetitions)\n",
                  "", base_pre, base_dec, 100 * pre_over, 100 * dec_over, static_cast<long long>(reps));
  }
  return 0;
}

}  // namespace eora::cli
