// Forward pass, KV cache, low-rank path, sampler and generator on small synthetic
// models (real math, random weights).
#include "engine/model.h"

#include <cmath>
#include <random>
#include <set>

#include "engine/backend/cpu/kernels.h"
#include "engine/generator.h"
#include "engine/sampler.h"
#include "engine/synthetic.h"
#include "gtest/gtest.h"

namespace eora {
namespace {

ModelConfig TinyConfig() {
  ModelConfig c;
  c.dim = 48;
  c.n_layers = 2;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.ffn_dim = 70;  // not a multiple of 32
  c.vocab_size = 97;
  c.max_seq_len = 64;
  return c;
}

std::shared_ptr<ModelWeights> TinyModel(int bits = 32) {
  WeightStorage s;
  s.bits = bits;
  s.group_size = 32;
  auto w = MakeSyntheticModel(TinyConfig(), s, 42);
  EXPECT_TRUE(w.ok()) << w.status();
  // Larger weights than the default init so that logits differ visibly per position.
  return *w;
}

std::vector<int> RandomTokens(int n, int seed, int vocab) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, vocab - 1);
  std::vector<int> v(n);
  for (auto& t : v) t = d(rng);
  return v;
}

double MaxRelDiff(const float* a, const float* b, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i) {
    num = std::max(num, static_cast<double>(std::fabs(a[i] - b[i])));
    den = std::max(den, static_cast<double>(std::fabs(b[i])));
  }
  return num / std::max(den, 1e-12);
}

// Logits of the last token of `tokens`, run alone in a fresh cache.
std::vector<float> RunAlone(Model& m, const std::vector<int>& tokens,
                            const LowRankAdapter* adapter = nullptr, int rank = 0) {
  KvCache cache(m.config(), 256);
  KvSequence s = cache.NewSequence();
  SequenceChunk ch{&s, tokens, adapter, rank, LogitsMode::kLast};
  std::vector<float> logits;
  EXPECT_TRUE(m.Forward({&ch, 1}, &cache, &logits).ok());
  return logits;
}

TEST(KvCache, ReserveAdvanceFree) {
  KvCache cache(TinyConfig(), 64);  // 4 blocks of 16
  EXPECT_EQ(cache.total_blocks(), 4);
  KvSequence a = cache.NewSequence(), b = cache.NewSequence();
  ASSERT_TRUE(cache.Reserve(&a, 17).ok());
  EXPECT_EQ(cache.free_blocks(), 2);
  cache.Advance(&a, 17);
  EXPECT_EQ(a.length(), 17);
  ASSERT_TRUE(cache.Reserve(&b, 32).ok());
  EXPECT_EQ(cache.free_blocks(), 0);
  absl::Status full = cache.Reserve(&a, 16);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(a.length(), 17);
  EXPECT_EQ(cache.free_blocks(), 0);
  cache.Free(&b);
  EXPECT_EQ(cache.free_blocks(), 2);
  cache.Truncate(&a, 10);
  EXPECT_EQ(a.length(), 10);
  EXPECT_EQ(cache.free_blocks(), 3);
}

// Keys and values of every position and layer have their own storage; F16 caches
// round to the nearest F16 and take half the bytes.
TEST(KvCache, StoreLoadBothTypes) {
  const ModelConfig c = TinyConfig();
  const int kvd = c.kv_dim();
  for (KvDType dt : {KvDType::kF32, KvDType::kF16}) {
    SCOPED_TRACE(KvDTypeName(dt));
    KvCache cache(c, 64, dt);
    EXPECT_EQ(cache.dtype(), dt);
    EXPECT_EQ(cache.BytesPerToken(), static_cast<size_t>(c.n_layers) * 2 * kvd * (dt == KvDType::kF16 ? 2 : 4));
    EXPECT_EQ(cache.bytes(), cache.BytesPerToken() * 64);
    KvSequence a = cache.NewSequence();
    ASSERT_TRUE(cache.Reserve(&a, 40).ok());
    auto val = [&](int layer, int pos, int kind, int i) { return 0.001f * i + 10.f * layer + 0.37f * pos + 100.f * kind + 0.1f; };
    std::vector<float> k(kvd), v(kvd);
    for (int layer = 0; layer < c.n_layers; ++layer)
      for (int pos = 0; pos < 40; ++pos) {
        for (int i = 0; i < kvd; ++i) k[i] = val(layer, pos, 0, i), v[i] = val(layer, pos, 1, i);
        cache.Store(a, layer, pos, k.data(), v.data());
      }
    std::vector<float> scratch(cache.BlockFloats());
    for (int layer = 0; layer < c.n_layers; ++layer)
      for (int pos = 0; pos < 40; ++pos) {
        cache.Load(a, layer, pos, k.data(), v.data());
        const float* kb = cache.BlockKeys(a, layer, pos / KvCache::kBlockTokens, scratch.data());
        for (int i = 0; i < kvd; ++i) {
          const float ek = val(layer, pos, 0, i), ev = val(layer, pos, 1, i);
          const float want_k = dt == KvDType::kF16 ? F16ToF32(F32ToF16(ek)) : ek;
          const float want_v = dt == KvDType::kF16 ? F16ToF32(F32ToF16(ev)) : ev;
          ASSERT_EQ(k[i], want_k) << layer << " " << pos << " " << i;
          ASSERT_EQ(v[i], want_v) << layer << " " << pos << " " << i;
          ASSERT_EQ(kb[static_cast<size_t>(i) * KvCache::kBlockTokens + pos % KvCache::kBlockTokens], want_k);
        }
      }
  }
  EXPECT_EQ(ParseKvDType("f16").value(), KvDType::kF16);
  EXPECT_EQ(ParseKvDType("f32").value(), KvDType::kF32);
  EXPECT_EQ(ParseKvDType("bf16").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Sampler, GreedyAndSeeded) {
  std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f};
  Sampler greedy(SamplingParams{});
  EXPECT_EQ(greedy.Sample(logits.data(), 5), 1);  // ties -> lowest id
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 123;
  Sampler s1(p), s2(p);
  std::vector<int> a, b;
  for (int i = 0; i < 50; ++i) {
    a.push_back(s1.Sample(logits.data(), 5));
    b.push_back(s2.Sample(logits.data(), 5));
  }
  EXPECT_EQ(a, b);
  // Sampling actually explores: more than one distinct token in 50 draws.
  EXPECT_GT(std::set<int>(a.begin(), a.end()).size(), 1u);
  p.top_k = 1;
  Sampler k1(p);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(k1.Sample(logits.data(), 5), 1);
  p.top_k = 0;
  p.top_p = 0.01f;
  Sampler p1(p);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(p1.Sample(logits.data(), 5), 1);
  // top-k 2 only ever returns the two best.
  p.top_p = 1.f;
  p.top_k = 2;
  Sampler k2(p);
  for (int i = 0; i < 100; ++i) {
    const int t = k2.Sample(logits.data(), 5);
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
}

TEST(Sampler, ArgmaxIsTheFirstMaximum) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> small(-3, 3);  // many ties
  for (int vocab : {1, 2, 7, 15, 16, 17, 31, 32, 33, 47, 48, 63, 512, 1001, 32000}) {
    for (int trial = 0; trial < 50; ++trial) {
      std::vector<float> v(vocab);
      for (auto& x : v) x = static_cast<float>(small(rng));
      if (trial % 5 == 1) v[rng() % vocab] = std::nanf("");
      if (trial % 7 == 2) v[0] = std::nanf("");
      if (trial % 11 == 3) std::fill(v.begin(), v.end(), -INFINITY);
      int ref = 0;
      for (int i = 1; i < vocab; ++i)
        if (v[i] > v[ref]) ref = i;
      ASSERT_EQ(Argmax(v.data(), vocab), ref) << "vocab " << vocab << " trial " << trial;
    }
  }
}

TEST(Sampler, ValidateNamesField) {
  SamplingParams p;
  p.temperature = -1;
  EXPECT_NE(std::string(p.Validate().message()).find("temperature"), std::string::npos);
  p = {};
  p.top_p = 0;
  EXPECT_NE(std::string(p.Validate().message()).find("top_p"), std::string::npos);
  p = {};
  p.top_k = -3;
  EXPECT_NE(std::string(p.Validate().message()).find("top_k"), std::string::npos);
}

TEST(Model, BatchedEqualsSeparate) {
  auto w = TinyModel();
  ThreadPool pool(2);
  Model m(w, &pool);
  const auto t1 = RandomTokens(5, 1, 97), t2 = RandomTokens(11, 2, 97), t3 = RandomTokens(1, 3, 97);
  KvCache cache(m.config(), 256);
  KvSequence s1 = cache.NewSequence(), s2 = cache.NewSequence(), s3 = cache.NewSequence();
  std::vector<SequenceChunk> batch = {{&s1, t1, nullptr, 0, LogitsMode::kLast},
                                      {&s2, t2, nullptr, 0, LogitsMode::kAll},
                                      {&s3, t3, nullptr, 0, LogitsMode::kLast}};
  // A tiny model with two threads: the step is split by sequence (one shard per
  // thread), and must give what each sequence gives alone.
  EXPECT_EQ(m.ShardCount(batch), 2);
  std::vector<float> logits;
  ASSERT_TRUE(m.Forward(batch, &cache, &logits).ok());
  const int V = 97;
  ASSERT_EQ(logits.size(), static_cast<size_t>((1 + 11 + 1) * V));
  EXPECT_LT(MaxRelDiff(logits.data(), RunAlone(m, t1).data(), V), 1e-5);
  EXPECT_LT(MaxRelDiff(logits.data() + 11 * V, RunAlone(m, t2).data(), V), 1e-5);
  EXPECT_LT(MaxRelDiff(logits.data() + 12 * V, RunAlone(m, t3).data(), V), 1e-5);
  // kAll rows: row j equals running the prefix of length j+1 alone.
  std::vector<int> prefix(t2.begin(), t2.begin() + 4);
  EXPECT_LT(MaxRelDiff(logits.data() + (1 + 3) * V, RunAlone(m, prefix).data(), V), 1e-5);
  EXPECT_EQ(s2.length(), 11);
}

// An F16 KV cache gives logits within F16 rounding of the F32 cache's, through
// prefill and incremental decode, on the grouped-query 8-wide attention (TinyConfig:
// 3 query heads per KV head) and on the 16-wide one (one per KV head, head dim 16).
TEST(Model, F16KvCacheCloseToF32) {
  ModelConfig mha = TinyConfig();
  mha.n_heads = mha.n_kv_heads = 3;
  mha.head_dim = 16;
  for (const ModelConfig& config : {TinyConfig(), mha}) {
    SCOPED_TRACE(config.n_heads / config.n_kv_heads);
    WeightStorage ws;
    auto w = MakeSyntheticModel(config, ws, 42);
    ASSERT_TRUE(w.ok()) << w.status();
    ThreadPool pool(2);
    Model m(*w, &pool);
    const auto toks = RandomTokens(45, 11, config.vocab_size);  // 3 KV blocks
    std::vector<std::vector<float>> out[2];
    for (KvDType dt : {KvDType::kF32, KvDType::kF16}) {
      KvCache cache(config, 64, dt);
      KvSequence s = cache.NewSequence();
      std::vector<float> logits;
      SequenceChunk first{&s, std::span<const int>(toks.data(), 30), nullptr, 0, LogitsMode::kLast};
      ASSERT_TRUE(m.Forward({&first, 1}, &cache, &logits).ok());
      out[dt == KvDType::kF16].push_back(logits);
      for (size_t i = 30; i < toks.size(); ++i) {
        SequenceChunk ch{&s, std::span<const int>(toks.data() + i, 1), nullptr, 0, LogitsMode::kLast};
        ASSERT_TRUE(m.Forward({&ch, 1}, &cache, &logits).ok());
        out[dt == KvDType::kF16].push_back(logits);
      }
    }
    ASSERT_EQ(out[0].size(), out[1].size());
    double worst = 0;
    bool differ = false;
    for (size_t i = 0; i < out[0].size(); ++i) {
      worst = std::max(worst, MaxRelDiff(out[1][i].data(), out[0][i].data(), config.vocab_size));
      differ |= out[0][i] != out[1][i];
    }
    EXPECT_LT(worst, 1e-3);  // 8e-5 measured
    EXPECT_TRUE(differ) << "the F16 cache gave the F32 cache's bits: was it used?";
  }
}

TEST(Model, IncrementalDecodeEqualsPrefill) {
  auto w = TinyModel();
  ThreadPool pool(1);
  Model m(w, &pool);
  const auto toks = RandomTokens(20, 9, 97);
  KvCache cache(m.config(), 256);
  KvSequence s = cache.NewSequence();
  std::vector<float> logits;
  SequenceChunk first{&s, std::span<const int>(toks.data(), 7), nullptr, 0, LogitsMode::kNone};
  ASSERT_TRUE(m.Forward({&first, 1}, &cache, &logits).ok());
  EXPECT_TRUE(logits.empty());
  for (size_t i = 7; i < toks.size(); ++i) {
    SequenceChunk ch{&s, std::span<const int>(toks.data() + i, 1), nullptr, 0, LogitsMode::kLast};
    ASSERT_TRUE(m.Forward({&ch, 1}, &cache, &logits).ok());
  }
  EXPECT_LT(MaxRelDiff(logits.data(), RunAlone(m, toks).data(), 97), 1e-5);
}

TEST(Model, PositionMatters) {
  // The same token at different positions gives different logits (RoPE + attention).
  auto w = TinyModel();
  ThreadPool pool(1);
  Model m(w, &pool);
  auto a = RunAlone(m, {5, 7});
  auto b = RunAlone(m, {7, 7});
  EXPECT_GT(MaxRelDiff(a.data(), b.data(), 97), 1e-4);
}

TEST(Model, RejectsBadInputWithoutTouchingCache) {
  auto w = TinyModel();
  ThreadPool pool(1);
  Model m(w, &pool);
  KvCache cache(m.config(), 64);
  KvSequence s = cache.NewSequence();
  std::vector<float> logits;
  std::vector<int> bad = {1, 97};
  SequenceChunk ch{&s, bad, nullptr, 0, LogitsMode::kLast};
  EXPECT_EQ(m.Forward({&ch, 1}, &cache, &logits).code(), absl::StatusCode::kInvalidArgument);
  std::vector<int> too_long(65, 1);
  ch.tokens = too_long;
  EXPECT_EQ(m.Forward({&ch, 1}, &cache, &logits).code(), absl::StatusCode::kOutOfRange);
  // Cache with 64 positions: two sequences of 40 cannot both fit.
  std::vector<int> forty(40, 3);
  KvSequence s2 = cache.NewSequence();
  std::vector<SequenceChunk> two = {{&s, forty, nullptr, 0, LogitsMode::kLast},
                                    {&s2, forty, nullptr, 0, LogitsMode::kLast}};
  EXPECT_EQ(m.Forward(two, &cache, &logits).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache.free_blocks(), cache.total_blocks());
  EXPECT_EQ(s.length(), 0);
  auto adapter = MakeRandomAdapter("a", m.config(), 4, WeightStorage{}, 1);
  ASSERT_TRUE(adapter.ok());
  std::vector<int> one = {1};
  SequenceChunk r{&s, one, adapter->get(), 5, LogitsMode::kLast};
  EXPECT_EQ(m.Forward({&r, 1}, &cache, &logits).code(), absl::StatusCode::kInvalidArgument);
}

TEST(Model, ShardedStepRejectsBadInputWithoutTouchingCache) {
  auto w = TinyModel();
  ThreadPool pool(2);
  Model m(w, &pool);
  KvCache cache(m.config(), 64);
  KvSequence s1 = cache.NewSequence(), s2 = cache.NewSequence(), s3 = cache.NewSequence();
  std::vector<int> ok = {1, 2, 3}, bad = {4, 97};
  std::vector<SequenceChunk> batch = {{&s1, ok, nullptr, 0, LogitsMode::kLast},
                                      {&s2, ok, nullptr, 0, LogitsMode::kLast},
                                      {&s3, bad, nullptr, 0, LogitsMode::kLast}};
  ASSERT_EQ(m.ShardCount(batch), 2);
  std::vector<float> logits;
  // The bad token is in the second shard: the first shard's reservation is undone.
  EXPECT_EQ(m.Forward(batch, &cache, &logits).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.free_blocks(), cache.total_blocks());
  // Out of KV space in the second shard (64 positions: 3 x 30 do not fit).
  std::vector<int> thirty(30, 3);
  for (auto& ch : batch) ch.tokens = thirty;
  EXPECT_EQ(m.Forward(batch, &cache, &logits).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache.free_blocks(), cache.total_blocks());
  EXPECT_EQ(s1.length() + s2.length() + s3.length(), 0);
  // A good step still runs and advances every sequence.
  for (auto& ch : batch) ch.tokens = ok;
  ASSERT_TRUE(m.Forward(batch, &cache, &logits).ok());
  EXPECT_EQ(logits.size(), static_cast<size_t>(3 * 97));
  EXPECT_EQ(s1.length() + s2.length() + s3.length(), 9);
  // One thread never shards.
  ThreadPool one(1);
  Model m1(w, &one);
  EXPECT_EQ(m1.ShardCount(batch), 1);
}

// Model whose linear weights are W + B[:, :r] A[:r] explicitly.
std::shared_ptr<ModelWeights> MergeAdapter(const ModelWeights& base, const LowRankAdapter& ad,
                                           int r) {
  auto out = std::make_shared<ModelWeights>(base);
  for (int l = 0; l < base.config.n_layers; ++l) {
    for (int mi = 0; mi < kNumModules; ++mi) {
      const Matrix& W = *base.layers[l].linear[mi];
      std::vector<float> w = W.Dequantize();
      const auto& f = ad.factors(l, static_cast<Module>(mi));
      const auto A = f.a->Dequantize(), Bt = f.bt->Dequantize();
      for (int o = 0; o < W.rows(); ++o)
        for (int i = 0; i < W.cols(); ++i) {
          double s = 0;
          for (int j = 0; j < r; ++j)
            s += static_cast<double>(Bt[static_cast<size_t>(j) * W.rows() + o]) *
                 A[static_cast<size_t>(j) * W.cols() + i];
          w[static_cast<size_t>(o) * W.cols() + i] += static_cast<float>(s);
        }
      out->layers[l].linear[mi] = MakeDenseMatrixFromF32(DType::kF32, W.rows(), W.cols(), w.data());
    }
  }
  return out;
}

TEST(Model, LowRankMatchesMergedWeightsAndMixesInOneBatch) {
  auto w = TinyModel();
  ThreadPool pool(2);
  Model m(w, &pool);
  auto ad1 = MakeRandomAdapter("one", m.config(), 8, WeightStorage{}, 11, 0.2f);
  auto ad2 = MakeRandomAdapter("two", m.config(), 5, WeightStorage{}, 12, 0.2f);
  ASSERT_TRUE(ad1.ok() && ad2.ok());
  const auto ta = RandomTokens(6, 4, 97), tb = RandomTokens(9, 5, 97), tc = RandomTokens(3, 6, 97);

  // Against merged weights (prefix truncation to rank 3 for adapter one).
  auto merged1 = MergeAdapter(*w, **ad1, 3);
  Model mm1(merged1, &pool);
  const auto ref_a = RunAlone(mm1, ta);
  auto merged2 = MergeAdapter(*w, **ad2, 5);
  Model mm2(merged2, &pool);
  const auto ref_b = RunAlone(mm2, tb);
  const auto ref_c = RunAlone(m, tc);
  EXPECT_LT(MaxRelDiff(RunAlone(m, ta, ad1->get(), 3).data(), ref_a.data(), 97), 1e-4);
  // The adapter changes the output (so the comparison above is not vacuous).
  EXPECT_GT(MaxRelDiff(RunAlone(m, ta).data(), ref_a.data(), 97), 1e-3);

  KvCache cache(m.config(), 256);
  KvSequence s1 = cache.NewSequence(), s2 = cache.NewSequence(), s3 = cache.NewSequence(),
             s4 = cache.NewSequence();
  std::vector<SequenceChunk> batch = {{&s1, ta, ad1->get(), 3, LogitsMode::kLast},
                                      {&s2, tb, ad2->get(), 5, LogitsMode::kLast},
                                      {&s3, tc, nullptr, 0, LogitsMode::kLast},
                                      {&s4, ta, ad1->get(), 3, LogitsMode::kLast}};
  std::vector<float> logits;
  ASSERT_TRUE(m.Forward(batch, &cache, &logits).ok());
  EXPECT_LT(MaxRelDiff(logits.data(), ref_a.data(), 97), 1e-4);
  EXPECT_LT(MaxRelDiff(logits.data() + 97, ref_b.data(), 97), 1e-4);
  EXPECT_LT(MaxRelDiff(logits.data() + 2 * 97, ref_c.data(), 97), 1e-5);
  EXPECT_LT(MaxRelDiff(logits.data() + 3 * 97, ref_a.data(), 97), 1e-4);
}

// Quantized factors (int8 activations on the A side, the int8 B side): a batch
// that mixes two adapters at several ranks and a plain sequence (ApplyLowRank:
// each run's rows quantized once, the A rows of all runs split over the threads
// in whole panels) gives each sequence what it gets alone (one adapter: its A
// products in the base products' region). 300 tokens, so that the step is not
// split by sequence (Model::ShardCount) and the runs share one step.
TEST(Model, QuantizedFactorsMixedBatchEqualsEachAlone) {
  auto w = TinyModel();
  ThreadPool pool(2);
  Model m(w, &pool);
  WeightStorage q4;
  q4.bits = 4;
  auto ad1 = MakeRandomAdapter("one", m.config(), 20, q4, 21, 0.2f);
  auto ad2 = MakeRandomAdapter("two", m.config(), 16, q4, 22, 0.2f);
  ASSERT_TRUE(ad1.ok() && ad2.ok());
  struct Seq {
    const LowRankAdapter* adapter;
    int rank;
  };
  const Seq seqs[] = {{ad1->get(), 18}, {ad2->get(), 16}, {nullptr, 0},
                      {ad1->get(), 7},  {ad2->get(), 16}, {ad1->get(), 18}};
  constexpr int kTokens = 50;
  KvCache cache(m.config(), 512);
  std::vector<std::vector<int>> toks;
  std::vector<KvSequence> kv;
  std::vector<SequenceChunk> batch;
  for (int i = 0; i < 6; ++i) {
    toks.push_back(RandomTokens(kTokens, 40 + i, 97));
    kv.push_back(cache.NewSequence());
  }
  for (int i = 0; i < 6; ++i) batch.push_back({&kv[i], toks[i], seqs[i].adapter, seqs[i].rank, LogitsMode::kLast});
  ASSERT_FALSE(SmallStep(m.config(), 6 * kTokens));
  std::vector<float> logits;
  ASSERT_TRUE(m.Forward(batch, &cache, &logits).ok());
  for (int i = 0; i < 6; ++i) {
    const auto alone = RunAlone(m, toks[i], seqs[i].adapter, seqs[i].rank);
    EXPECT_LT(MaxRelDiff(logits.data() + i * 97, alone.data(), 97), 1e-5) << "sequence " << i;
  }
  // The adapters matter (so the comparisons above are not vacuous).
  EXPECT_GT(MaxRelDiff(RunAlone(m, toks[0]).data(), RunAlone(m, toks[0], ad1->get(), 18).data(), 97), 1e-3);
}

TEST(Generator, BatchOfRequestsEqualsEachAlone) {
  auto w = TinyModel();
  ThreadPool pool(2);
  Model m(w, &pool);
  auto ad = MakeRandomAdapter("x", m.config(), 6, WeightStorage{}, 3, 0.2f);
  ASSERT_TRUE(ad.ok());
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 6; ++i) {
    GenerationRequest r;
    r.prompt = RandomTokens(2 + 3 * i, 100 + i, 97);
    r.max_new_tokens = 5 + i;
    r.sampling.temperature = i % 2 ? 0.7f : 0.f;
    r.sampling.seed = i;
    if (i % 3 == 1) {
      r.adapter = *ad;
      r.rank = 2 + i % 4;
    }
    reqs.push_back(r);
  }
  GeneratorOptions small_budget;
  small_budget.max_step_tokens = 7;  // forces chunked prefill mixed with decode
  auto together = GenerateAll(&m, reqs, small_budget);
  ASSERT_TRUE(together.ok()) << together.status();
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto alone = GenerateAll(&m, {reqs[i]});
    ASSERT_TRUE(alone.ok());
    EXPECT_EQ((*together)[i].tokens, (*alone)[0].tokens) << "request " << i;
    EXPECT_EQ((*together)[i].tokens.size(), static_cast<size_t>(reqs[i].max_new_tokens));
    EXPECT_EQ((*together)[i].finish, FinishReason::kLength);
    EXPECT_EQ((*together)[i].rank_used, reqs[i].adapter ? reqs[i].rank : 0);
  }
}

TEST(Generator, StopTokensAndValidation) {
  auto w = TinyModel();
  ThreadPool pool(1);
  Model m(w, &pool);
  GenerationRequest r;
  r.prompt = {1, 2, 3};
  r.max_new_tokens = 20;
  auto base = GenerateAll(&m, {r});
  ASSERT_TRUE(base.ok());
  ASSERT_GE((*base)[0].tokens.size(), 3u);
  r.stop_token_ids = {(*base)[0].tokens[2]};
  auto stopped = GenerateAll(&m, {r});
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ((*stopped)[0].finish, FinishReason::kStop);
  EXPECT_LE((*stopped)[0].tokens.size(), 2u);

  Generator gen(&m, GeneratorOptions{});
  GenerationRequest bad = r;
  bad.prompt.clear();
  EXPECT_EQ(gen.Add(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = r;
  bad.sampling.top_p = 2;
  EXPECT_EQ(gen.Add(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = r;
  bad.rank = 3;  // no adapter
  EXPECT_EQ(gen.Add(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = r;
  bad.prompt.assign(64, 1);
  EXPECT_EQ(gen.Add(bad).status().code(), absl::StatusCode::kInvalidArgument);

  // Cancellation frees the sequence.
  auto id = gen.Add(r);
  ASSERT_TRUE(id.ok());
  auto step = gen.Step(nullptr, nullptr);
  ASSERT_TRUE(step.ok());
  gen.Cancel(*id);
  GenerationResult got;
  auto more = gen.Step(nullptr, [&](int64_t, GenerationResult res) { got = std::move(res); });
  ASSERT_TRUE(more.ok());
  EXPECT_FALSE(*more);
  EXPECT_EQ(got.finish, FinishReason::kCancelled);
  EXPECT_EQ(gen.cache().free_blocks(), gen.cache().total_blocks());
}

TEST(Model, QuantizedModelTracksFloatModel) {
  auto wf = TinyModel(32);
  auto wq = TinyModel(4);
  ThreadPool pool(2);
  Model mf(wf, &pool), mq(wq, &pool);
  const auto toks = RandomTokens(12, 77, 97);
  auto lf = RunAlone(mf, toks), lq = RunAlone(mq, toks);
  // 4-bit RTN of the same random weights: close but not equal.
  const double d = MaxRelDiff(lq.data(), lf.data(), 97);
  EXPECT_LT(d, 0.25);
  EXPECT_GT(d, 1e-6);
}

}  // namespace
}  // namespace eora

namespace eora {
namespace {

class CountingObserver : public LinearObserver {
 public:
  void OnLinearInput(int layer, Module m, const float* x, int rows, int cols) override {
    ++calls[static_cast<int>(m)];
    last_rows = rows;
    last_cols[static_cast<int>(m)] = cols;
  }
  int calls[kNumModules] = {};
  int last_cols[kNumModules] = {};
  int last_rows = 0;
};

TEST(Model, LayerWiseForwardEqualsForward) {
  auto w = TinyModel();
  ThreadPool pool(2);
  Model m(w, &pool);
  const auto t1 = RandomTokens(9, 21, 97), t2 = RandomTokens(4, 22, 97);
  const int V = 97, D = m.config().dim;
  std::vector<int> all = t1;
  all.insert(all.end(), t2.begin(), t2.end());
  std::vector<float> hidden(all.size() * D);
  ASSERT_TRUE(m.Embed(all, hidden.data()).ok());
  const std::vector<int> lens = {9, 4};
  CountingObserver obs;
  for (int l = 0; l < m.config().n_layers; ++l)
    ASSERT_TRUE(m.ForwardLayer(l, nullptr, nullptr, lens, hidden.data(), &obs).ok());
  EXPECT_EQ(obs.calls[static_cast<int>(Module::kQ)], 2);
  EXPECT_EQ(obs.calls[static_cast<int>(Module::kDown)], 2);
  EXPECT_EQ(obs.last_cols[static_cast<int>(Module::kDown)], m.config().ffn_dim);
  EXPECT_EQ(obs.last_rows, 13);
  std::vector<float> logits(all.size() * V);
  m.Logits(hidden.data(), static_cast<int>(all.size()), logits.data());
  EXPECT_LT(MaxRelDiff(logits.data() + 8 * V, RunAlone(m, t1).data(), V), 1e-5);
  EXPECT_LT(MaxRelDiff(logits.data() + 12 * V, RunAlone(m, t2).data(), V), 1e-5);

  // With per-layer factors: equals the adapter at full rank through Forward.
  auto ad = MakeRandomAdapter("f", m.config(), 4, WeightStorage{}, 5, 0.2f);
  ASSERT_TRUE(ad.ok());
  ASSERT_TRUE(m.Embed(all, hidden.data()).ok());
  for (int l = 0; l < m.config().n_layers; ++l) {
    LayerFactors f;
    for (int mi = 0; mi < kNumModules; ++mi) f[mi] = (*ad)->factors(l, static_cast<Module>(mi));
    ASSERT_TRUE(m.ForwardLayer(l, nullptr, &f, lens, hidden.data(), nullptr).ok());
  }
  m.Logits(hidden.data(), static_cast<int>(all.size()), logits.data());
  EXPECT_LT(MaxRelDiff(logits.data() + 8 * V, RunAlone(m, t1, ad->get(), 4).data(), V), 1e-5);
}

// Captures the inputs of the q/k/v and o projections (the attention output).
class AttentionObserver : public LinearObserver {
 public:
  void OnLinearInput(int, Module m, const float* x, int rows, int cols) override {
    if (m == Module::kQ) xn.assign(x, x + static_cast<size_t>(rows) * cols);
    if (m == Module::kO) att.assign(x, x + static_cast<size_t>(rows) * cols);
  }
  std::vector<float> xn, att;
};

// The attention kernels (vector paths for head dims 8..128 and query groups of
// 1, 2, 4, scalar otherwise) against a double-precision reference, over lengths that are not multiples of
// the 8-key groups or the 16-position KV blocks.
TEST(Model, AttentionMatchesNaiveReference) {
  // (query heads, KV heads): groups of 1, 2, 4 and 3 query heads per KV head;
  // 8, 7 and 6 KV heads for the calls that interleave several KV heads (runs of
  // 8, and of 4 + 2 + 1 and 4 + 2 with an offset into the blocks).
  const std::pair<int, int> heads[] = {{4, 4}, {4, 2}, {4, 1}, {3, 1}, {8, 8}, {7, 7}, {12, 6}};
  // The default kernels, and AVX2 for the 8-wide attention on AVX-512 machines.
  const std::string saved = cpu::ActiveIsaName();
  struct Restore {
    std::string isa;
    ~Restore() { cpu::SetActiveIsa(isa); }
  } restore{saved};
  // Both KV cache types: an F16 cache's keys and values are rounded to F16 (the
  // reference's exact ones are not), so its tolerance is that of F16 rounding.
  for (const std::string& isa : {saved, std::string("avx2")})
  for (KvDType kv_dtype : {KvDType::kF32, KvDType::kF16}) {
    if (cpu::KernelsFor(isa) == nullptr) continue;
    ASSERT_TRUE(cpu::SetActiveIsa(isa));
    SCOPED_TRACE(isa + " " + KvDTypeName(kv_dtype));
    for (int hd : {8, 16, 32, 64, 128, 12}) {
      for (auto [nh, nkv] : heads) {
        for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
          ModelConfig c;
          c.n_heads = nh;
          c.n_kv_heads = nkv;
          c.head_dim = hd;
          c.dim = c.n_heads * hd;
          c.n_layers = 1;
          c.ffn_dim = 24;
          c.vocab_size = 50;
          c.max_seq_len = 128;
          c.rope_style = style;
          auto w = MakeSyntheticModel(c, WeightStorage{}, 7);
          ASSERT_TRUE(w.ok()) << w.status();
          ThreadPool pool(2);
          Model m(*w, &pool);
          const std::vector<int> lens = {37, 5, 16};
          std::vector<int> toks = RandomTokens(58, hd, c.vocab_size);
          std::vector<float> hidden(toks.size() * c.dim);
          ASSERT_TRUE(m.Embed(toks, hidden.data()).ok());
          AttentionObserver obs;
          ASSERT_TRUE(m.ForwardLayer(0, nullptr, nullptr, lens, hidden.data(), &obs, kv_dtype).ok());
          const LayerWeights& L = (*w)->layers[0];
          const std::vector<float> wq = L.w(Module::kQ).Dequantize(),
                                   wk = L.w(Module::kK).Dequantize(),
                                   wv = L.w(Module::kV).Dequantize();
          const int qd = c.q_dim(), kvd = c.kv_dim(), half = hd / 2;
          auto project = [&](const std::vector<float>& wm, int rows, int t) {
            std::vector<double> out(rows);
            for (int r = 0; r < rows; ++r)
              for (int k = 0; k < c.dim; ++k)
                out[r] += static_cast<double>(wm[static_cast<size_t>(r) * c.dim + k]) *
                          obs.xn[static_cast<size_t>(t) * c.dim + k];
            return out;
          };
          auto rope = [&](std::vector<double>& v, int heads, int pos) {
            for (int h = 0; h < heads; ++h)
              for (int i = 0; i < half; ++i) {
                const double ang = pos * std::pow(static_cast<double>(c.rope_theta), -2.0 * i / hd);
                const int ia = h * hd + (style == RopeStyle::kInterleaved ? 2 * i : i);
                const int ib = h * hd + (style == RopeStyle::kInterleaved ? 2 * i + 1 : i + half);
                const double a = v[ia], b = v[ib];
                v[ia] = a * std::cos(ang) - b * std::sin(ang);
                v[ib] = a * std::sin(ang) + b * std::cos(ang);
              }
          };
          double max_err = 0, max_ref = 0;
          int start = 0;
          for (int len : lens) {
            std::vector<std::vector<double>> q(len), k(len), v(len);
            for (int p = 0; p < len; ++p) {
              q[p] = project(wq, qd, start + p);
              k[p] = project(wk, kvd, start + p);
              v[p] = project(wv, kvd, start + p);
              rope(q[p], c.n_heads, p);
              rope(k[p], c.n_kv_heads, p);
            }
            for (int p = 0; p < len; ++p)
              for (int h = 0; h < c.n_heads; ++h) {
                const int kvh = h / (c.n_heads / c.n_kv_heads);
                std::vector<double> s(p + 1);
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= p; ++j) {
                  for (int d = 0; d < hd; ++d) s[j] += q[p][h * hd + d] * k[j][kvh * hd + d];
                  s[j] /= std::sqrt(static_cast<double>(hd));
                  mx = std::max(mx, s[j]);
                }
                for (int j = 0; j <= p; ++j) sum += s[j] = std::exp(s[j] - mx);
                for (int d = 0; d < hd; ++d) {
                  double o = 0;
                  for (int j = 0; j <= p; ++j) o += s[j] / sum * v[j][kvh * hd + d];
                  const double got = obs.att[static_cast<size_t>(start + p) * qd + h * hd + d];
                  max_err = std::max(max_err, std::fabs(got - o));
                  max_ref = std::max(max_ref, std::fabs(o));
                }
              }
            start += len;
          }
          EXPECT_LT(max_err, (kv_dtype == KvDType::kF16 ? 2e-3 : 1e-5) * std::max(1.0, max_ref))
              << "head_dim " << hd << ", " << nh << " heads, " << nkv << " KV heads";
        }
      }
    }
  }
}

}  // namespace
}  // namespace eora

namespace eora {
namespace {

TEST(Generator, AdmitsOnlyWhatFitsTheCacheAndFinishesEverything) {
  auto w = TinyModel();
  ThreadPool pool(1);
  Model m(w, &pool);
  GeneratorOptions opt;
  opt.kv_cache_tokens = 64;  // 4 blocks of 16
  Generator gen(&m, opt);
  GenerationRequest big;
  big.prompt.assign(40, 1);
  big.max_new_tokens = 30;  // 70 tokens: 5 blocks, never fits
  EXPECT_EQ(gen.Add(big).status().code(), absl::StatusCode::kResourceExhausted);
  for (int i = 0; i < 5; ++i) {
    GenerationRequest r;
    r.prompt = RandomTokens(10, 300 + i, 97);
    r.max_new_tokens = 10;  // 20 tokens: 2 blocks each, two at a time
    ASSERT_TRUE(gen.Add(r).ok());
  }
  int finished = 0, max_running = 0;
  for (;;) {
    auto more = gen.Step(nullptr, [&](int64_t, GenerationResult r) {
      EXPECT_EQ(r.finish, FinishReason::kLength);
      EXPECT_EQ(r.tokens.size(), 10u);
      ++finished;
    });
    ASSERT_TRUE(more.ok()) << more.status();
    max_running = std::max(max_running, gen.running());
    if (!*more) break;
  }
  EXPECT_EQ(finished, 5);
  EXPECT_EQ(max_running, 2);
  EXPECT_EQ(gen.cache().free_blocks(), 4);
}

}  // namespace
}  // namespace eora
