// End-to-end checks on the bundled real model (stories260K, F32 GGUF).
#include <cmath>
#include <filesystem>

#include "engine/generator.h"
#include "engine/model_loader.h"
#include "engine/perplexity.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace eora {
namespace {

std::shared_ptr<ModelWeights> LoadStories() {
  auto w = LoadModel(testing::Stories260kPath());
  EXPECT_TRUE(w.ok()) << w.status();
  if (!w.ok()) return nullptr;
  return std::make_shared<ModelWeights>(std::move(*w));
}

TEST(Stories260K, GreedyFromBosPrintsTheLlama2cStory) {
  auto w = LoadStories();
  ASSERT_TRUE(w);
  ThreadPool pool(2);
  Model m(w, &pool);
  GenerationRequest r;
  r.prompt = {w->tokenizer->bos_id()};
  r.max_new_tokens = 60;
  auto res = GenerateAll(&m, {r});
  ASSERT_TRUE(res.ok()) << res.status();
  std::vector<int> all = r.prompt;
  all.insert(all.end(), (*res)[0].tokens.begin(), (*res)[0].tokens.end());
  const std::string text = w->tokenizer->Decode(all);
  const std::string expected =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "park. One day, she saw a big, red ball";
  EXPECT_EQ(text.substr(0, expected.size()), expected) << text;
}

TEST(Stories260K, PerplexityMatchesLlamaCpp) {
  auto w = LoadStories();
  ASSERT_TRUE(w);
  const std::string text =
      testing::ReadFileOrDie(testing::SourcePath("tests/data/tinystories/valid-100k.txt"));
  const auto tokens = w->tokenizer->Encode(text, false);
  ThreadPool pool(2);
  Model m(w, &pool);
  // llama.cpp llama-perplexity (F32, flash attention off) on the same 100,000 bytes.
  for (auto [ctx, expected] : {std::pair{128, 4.0267}, std::pair{256, 3.9392}}) {
    PerplexityOptions opt;
    opt.ctx = ctx;
    opt.protocol = PerplexityProtocol::kLlamaCpp;
    auto res = ComputePerplexity(m, tokens, w->tokenizer->bos_id(), opt);
    ASSERT_TRUE(res.ok()) << res.status();
    EXPECT_NEAR(res->ppl / expected, 1.0, 1e-3) << "ctx " << ctx << " ppl " << res->ppl;
  }
}

TEST(Stories260K, HuggingFaceConversionGivesSameLogits) {
  // GGUF stores q/k permuted for interleaved RoPE; the HF checkpoint uses rotate-half.
  // Loading the same weights both ways must give the same logits.
  auto gguf = LoadStories();
  ASSERT_TRUE(gguf);
  const std::string dir = testing::MakeTempDir("eora-hf");
  ASSERT_TRUE(WriteHfCheckpoint(*gguf, dir, DType::kF32, 2).ok());
  auto hf = LoadModel(dir);
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ(hf->config.rope_style, RopeStyle::kHalf);
  auto hfw = std::make_shared<ModelWeights>(std::move(*hf));
  ThreadPool pool(2);
  Model a(gguf, &pool), b(hfw, &pool);
  const std::vector<int> toks = gguf->tokenizer->Encode("Once upon a time, a cat sat on a mat.", true);
  KvCache ca(a.config(), 128), cb(b.config(), 128);
  KvSequence sa = ca.NewSequence(), sb = cb.NewSequence();
  SequenceChunk cha{&sa, toks, nullptr, 0, LogitsMode::kAll};
  SequenceChunk chb{&sb, toks, nullptr, 0, LogitsMode::kAll};
  std::vector<float> la, lb;
  ASSERT_TRUE(a.Forward({&cha, 1}, &ca, &la).ok());
  ASSERT_TRUE(b.Forward({&chb, 1}, &cb, &lb).ok());
  ASSERT_EQ(la.size(), lb.size());
  double maxdiff = 0;
  for (size_t i = 0; i < la.size(); ++i) maxdiff = std::max(maxdiff, double(std::fabs(la[i] - lb[i])));
  EXPECT_LT(maxdiff, 1e-4);
  // BF16 storage of the same checkpoint stays close (and loads).
  const std::string dir16 = testing::MakeTempDir("eora-hf16");
  ASSERT_TRUE(WriteHfCheckpoint(*gguf, dir16, DType::kBF16, 1).ok());
  auto hf16 = LoadModel(dir16);
  ASSERT_TRUE(hf16.ok()) << hf16.status();
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(dir16);
}

}  // namespace
}  // namespace eora
