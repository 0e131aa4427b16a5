// End-to-end compression and adapter fitting on the real stories260K model, and the
// calibration set builder.
#include "compressor/pipeline.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "compressor/calibration.h"
#include "engine/adapter_io.h"
#include "engine/compressed_model.h"
#include "engine/model_loader.h"
#include "tests/test_util.h"

namespace eora::compress {
namespace {

// ---- Calibration ----------------------------------------------------------------

// A tokenizer over single characters 'a'..'z' (ids 3..28); BOS 1, EOS 2.
class CharTokenizer final : public Tokenizer {
 public:
  std::vector<int> Encode(std::string_view text, bool add_bos) const override {
    std::vector<int> v;
    if (add_bos) v.push_back(1);
    for (char ch : text)
      if (ch >= 'a' && ch <= 'z') v.push_back(3 + (ch - 'a'));
    return v;
  }
  std::string DecodeToken(int, int t) const override {
    return t >= 3 ? std::string(1, static_cast<char>('a' + t - 3)) : "";
  }
  int vocab_size() const override { return 29; }
  int bos_id() const override { return 1; }
  int eos_id() const override { return 2; }
  std::string_view Piece(int) const override { return ""; }
};

TEST(Calibration, WindowsStartWithBosAndHeldOutIsDisjoint) {
  CharTokenizer tok;
  const std::string text = "abcdefghij<|endoftext|>\n  klmnop <|endoftext|>qrstuvwxyzabcdefg<|endoftext|>";
  CalibrationOptions o;
  o.num_seqs = 3;
  o.seq_len = 6;
  o.heldout_seqs = 2;
  auto set = CalibrationFromText(text, tok, o);
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->fit.size(), 3u);
  ASSERT_EQ(set->heldout.size(), 2u);
  // Stream: a..j BOS k..p BOS q..z a..g; windows of 5 tokens after their own BOS.
  EXPECT_EQ(set->fit[0], (std::vector<int>{1, 3, 4, 5, 6, 7}));        // BOS a b c d e
  EXPECT_EQ(set->fit[1], (std::vector<int>{1, 8, 9, 10, 11, 12}));     // BOS f g h i j
  EXPECT_EQ(set->fit[2], (std::vector<int>{1, 13, 14, 15, 16, 17}));   // BOS k l m n o (doc BOS absorbed)
  EXPECT_EQ(set->heldout[0][1], 18);                                   // p
  for (const auto& s : set->heldout) EXPECT_EQ(s.size(), 6u);
  EXPECT_EQ(set->fit_tokens(), 18);
  EXPECT_EQ(set->fit_flat().size(), 18u);
  EXPECT_EQ(set->hash.rfind("sha256:", 0), 0u);
  EXPECT_EQ(set->hash.size(), 7u + 64u);
  // Same data, same hash; other data, other hash.
  EXPECT_EQ(CalibrationFromText(text, tok, o)->hash, set->hash);
  EXPECT_NE(CalibrationFromText("z" + text, tok, o)->hash, set->hash);
  // Too little text: a clear error.
  o.num_seqs = 10;
  auto small = CalibrationFromText(text, tok, o);
  EXPECT_EQ(small.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(small.status().message().find("gives 6 sequences"), std::string::npos) << small.status();
}

TEST(Calibration, TokenIdFiles) {
  CalibrationOptions o;
  o.num_seqs = 2;
  o.seq_len = 3;
  o.heldout_seqs = 0;
  auto set = CalibrationFromTokenIds("5 6 7\n\n8 9\n", 1, 29, o);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->fit[0], (std::vector<int>{1, 5, 6}));
  EXPECT_EQ(set->fit[1], (std::vector<int>{1, 7, 1}));  // document boundary: BOS
  EXPECT_FALSE(CalibrationFromTokenIds("5 6 x\n", 1, 29, o).ok());
  auto bad = CalibrationFromTokenIds("5 99\n", 1, 29, o);
  EXPECT_NE(bad.status().message().find("line 1"), std::string::npos) << bad.status();
}

// ---- End to end on stories260K ------------------------------------------------------

class Stories : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto w = LoadModel(testing::Stories260kPath());
    ASSERT_TRUE(w.ok()) << w.status();
    fp_ = new std::shared_ptr<ModelWeights>(std::make_shared<ModelWeights>(std::move(*w)));
    // Calibrate on the first part of the bundled TinyStories slice; the held-out
    // sequences come after the fitting ones.
    const std::string text = testing::ReadFileOrDie(testing::SourcePath("tests/data/tinystories/valid-100k.txt"));
    CalibrationOptions o;
    o.num_seqs = 48;
    o.seq_len = 128;
    o.heldout_seqs = 24;
    auto c = CalibrationFromText(text, *(*fp_)->tokenizer, o);
    ASSERT_TRUE(c.ok()) << c.status();
    calib_ = new CalibrationSet(std::move(*c));
    pool_ = new ThreadPool(2);
    CompressOptions co;
    co.method = BaseMethod::kGptq;
    co.bits = 3;
    auto r = CompressModel(**fp_, calib_, co, pool_);
    ASSERT_TRUE(r.ok()) << r.status();
    gptq3_ = new std::shared_ptr<ModelWeights>(r->weights);
  }
  static void TearDownTestSuite() {
    delete fp_;
    delete calib_;
    delete gptq3_;
    delete pool_;
  }
  static double Nll(std::shared_ptr<const ModelWeights> w, const LowRankAdapter* a = nullptr, int r = 0) {
    auto n = SequenceNll(std::move(w), calib_->heldout, a, r, pool_);
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? *n : 0;
  }
  static FitResult Fit(AdapterMethod m, int rank, int bits = 16) {
    FitOptions o;
    o.method = m;
    o.rank = rank;
    o.factor_bits = bits;
    auto r = FitAdapter(**fp_, **gptq3_, *calib_, o, pool_);
    EXPECT_TRUE(r.ok()) << r.status();
    return std::move(r).value();
  }

  static std::shared_ptr<ModelWeights>* fp_;
  static std::shared_ptr<ModelWeights>* gptq3_;
  static CalibrationSet* calib_;
  static ThreadPool* pool_;
};
std::shared_ptr<ModelWeights>* Stories::fp_ = nullptr;
std::shared_ptr<ModelWeights>* Stories::gptq3_ = nullptr;
CalibrationSet* Stories::calib_ = nullptr;
ThreadPool* Stories::pool_ = nullptr;

TEST_F(Stories, Gptq3PlusEoraImprovesHeldOutPerplexity) {
  const double fp = Nll(*fp_), base = Nll(*gptq3_);
  EXPECT_GT(base, fp + 0.1) << "3-bit GPTQ should cost visible quality";
  for (int l = 0; l < 5; ++l)
    EXPECT_EQ((*gptq3_)->layers[l].linear[0]->format(), MatrixFormat::kQuant);
  FitResult eora = Fit(AdapterMethod::kEora, 8);
  const double with = Nll(*gptq3_, eora.adapter.get(), 8);
  std::printf("held-out ppl: fp %.4f, gptq w3 %.4f, + eora r8 %.4f (gap recovered %.2f)\n",
              std::exp(fp), std::exp(base), std::exp(with), (base - with) / (base - fp));
  EXPECT_LT(with, base - 0.05);
  EXPECT_GT(with, fp - 0.01);
  // The profile was measured on the same held-out slice.
  ASSERT_EQ(eora.meta.profile.size(), 4u);  // ranks 1, 2, 4, 8
  EXPECT_EQ(eora.meta.profile.back().rank, 8);
  EXPECT_NEAR(eora.meta.profile.back().nll, with, 1e-9);
  EXPECT_NEAR(std::stod(eora.meta.extra.at("heldout_nll_compressed")), base, 1e-9);
  EXPECT_EQ(eora.meta.calibration_hash, calib_->hash);
  // EoRA beats plain SVD at the same rank.
  FitResult svd = Fit(AdapterMethod::kSvd, 8);
  EXPECT_LT(with, Nll(*gptq3_, svd.adapter.get(), 8));
}

TEST_F(Stories, CancelStopsAtTheNextLayerBoundary) {
  std::atomic<bool> cancel{false};
  std::vector<int> seen;
  auto stop_after_two = [&](int layer, int, double, double) {
    seen.push_back(layer);
    if (layer == 2) cancel = true;
  };
  FitOptions o;
  o.rank = 4;
  o.cancel = &cancel;
  auto fit = FitAdapter(**fp_, **gptq3_, *calib_, o, pool_, stop_after_two);
  ASSERT_EQ(fit.status().code(), absl::StatusCode::kCancelled) << fit.status();
  EXPECT_EQ(seen, (std::vector<int>{1, 2}));
  EXPECT_NE(fit.status().message().find("after 2 of 5 layers"), std::string::npos);
  seen.clear();
  cancel = false;
  CompressOptions co;
  co.method = BaseMethod::kRtn;
  co.bits = 4;
  co.cancel = &cancel;
  auto comp = CompressModel(**fp_, nullptr, co, pool_, stop_after_two);
  EXPECT_EQ(comp.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(seen, (std::vector<int>{1, 2}));
}

TEST_F(Stories, TruncationGivesTheSmallerRankAdapter) {
  FitResult r16 = Fit(AdapterMethod::kEora, 16);
  FitResult r4 = Fit(AdapterMethod::kEora, 4);
  // Loss falls with rank along the stored prefix.
  const auto& p = r16.meta.profile;
  ASSERT_EQ(p.size(), 5u);  // 1, 2, 4, 8, 16
  for (size_t i = 1; i < p.size(); ++i) EXPECT_LT(p[i].nll, p[i - 1].nll + 0.01) << p[i].rank;
  // Rank 16 truncated to 4 is about as good as an adapter fitted at 4.
  const double truncated = Nll(*gptq3_, r16.adapter.get(), 4);
  const double fitted = Nll(*gptq3_, r4.adapter.get(), 4);
  std::printf("rank 4: truncated from 16 ppl %.4f, fitted at 4 ppl %.4f\n", std::exp(truncated),
              std::exp(fitted));
  EXPECT_LT(std::abs(std::exp(truncated) / std::exp(fitted) - 1), 0.02);
}

TEST_F(Stories, QuantizedFactorsStayCloseToFloat) {
  FitResult f16 = Fit(AdapterMethod::kEora, 8, 16);
  FitResult q4 = Fit(AdapterMethod::kEora, 8, 4);
  EXPECT_EQ(q4.adapter->factors(0, Module::kQ).a->format(), MatrixFormat::kQuant);
  EXPECT_LT(q4.adapter->bytes(), f16.adapter->bytes() / 3);
  const double a = std::exp(Nll(*gptq3_, f16.adapter.get(), 8));
  const double b = std::exp(Nll(*gptq3_, q4.adapter.get(), 8));
  std::printf("eora r8: f16 factors ppl %.4f, 4-bit factors ppl %.4f\n", a, b);
  // The whole pipeline (GPTQ base, calibration, fit) amplifies rounding-level
  // changes of the forward pass: three engines that give the same perplexity to
  // 8 digits on the llama.cpp protocol gave f16 ppl 7.595 / 7.639 / 7.558 here and
  // ratios of 1.0036 / 1.0108 / 1.0170 (2026-11-23, attention kernel changes). So
  // the bound leaves room for that spread.
  EXPECT_LT(b / a - 1, 0.03);
}

TEST_F(Stories, CompressedDirAndAdapterReloadIdentically) {
  const std::string root = testing::MakeTempDir("pipeline");
  ASSERT_TRUE(WriteCompressedModel(root + "/base", **gptq3_, {{"method", "gptq"}}).ok());
  CompressedModelInfo info;
  auto loaded = LoadCompressedModel(root + "/base", &info);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto lw = std::make_shared<ModelWeights>(std::move(*loaded));
  // Identical logits, hence identical loss.
  auto logits = [](std::shared_ptr<const ModelWeights> w, const std::vector<int>& toks) {
    ThreadPool pool(1);
    Model m(w, &pool);
    const int dim = w->config.dim, vocab = w->config.vocab_size;
    std::vector<float> h(toks.size() * dim), out(toks.size() * vocab);
    EXPECT_TRUE(m.Embed(toks, h.data()).ok());
    const std::vector<int> lens = {static_cast<int>(toks.size())};
    for (int l = 0; l < w->config.n_layers; ++l)
      EXPECT_TRUE(m.ForwardLayer(l, nullptr, nullptr, lens, h.data(), nullptr).ok());
    m.Logits(h.data(), static_cast<int>(toks.size()), out.data());
    return out;
  };
  const std::vector<int> toks(calib_->heldout[0].begin(), calib_->heldout[0].begin() + 64);
  const std::vector<float> a = logits(*gptq3_, toks), b = logits(lw, toks);
  EXPECT_EQ(a, b);
  EXPECT_EQ(Nll(lw), Nll(*gptq3_));
  // The adapter directory round-trips too.
  FitResult f = Fit(AdapterMethod::kEora, 8, 4);
  f.meta.compressed_base = info.content_sha256;
  ASSERT_TRUE(WriteAdapterDir(root + "/adapter", *f.adapter, f.meta).ok());
  AdapterMetadata meta;
  auto ad = LoadAdapterDir(root + "/adapter", lw->config, "a", &meta);
  ASSERT_TRUE(ad.ok()) << ad.status();
  EXPECT_EQ(meta.profile.size(), f.meta.profile.size());
  EXPECT_EQ(meta.factor_bits, 4);
  EXPECT_EQ(Nll(lw, ad->get(), 8), Nll(*gptq3_, f.adapter.get(), 8));
}

TEST_F(Stories, OtherMethodsRun) {
  // Each base method produces a valid model in the expected format; CALDERA also
  // returns its L, R adapter.
  struct Case {
    BaseMethod m;
    int bits;
    MatrixFormat want;
  };
  for (const Case& c : {Case{BaseMethod::kRtn, 4, MatrixFormat::kQuant},
                        Case{BaseMethod::kSparseGpt, 0, MatrixFormat::kSparse24},
                        Case{BaseMethod::kWanda, 4, MatrixFormat::kSparse24Quant},
                        Case{BaseMethod::kSlimQuant, 4, MatrixFormat::kQuant}}) {
    CompressOptions o;
    o.method = c.m;
    o.bits = c.bits;
    auto r = CompressModel(**fp_, calib_, o, pool_);
    ASSERT_TRUE(r.ok()) << BaseMethodName(c.m) << ": " << r.status();
    EXPECT_EQ(r->weights->layers[2].w(Module::kDown).format(), c.want) << BaseMethodName(c.m);
    const double nll = Nll(r->weights);
    EXPECT_GT(nll, Nll(*fp_)) << BaseMethodName(c.m);
    EXPECT_LT(nll, std::log(512.0)) << BaseMethodName(c.m) << ": worse than uniform";
  }
  CompressOptions o;
  o.method = BaseMethod::kCaldera;
  o.bits = 2;
  o.caldera_rank = 8;
  o.caldera_outer_iters = 3;
  o.embedding_bits = 4;
  auto r = CompressModel(**fp_, calib_, o, pool_);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->caldera_adapter);
  EXPECT_EQ(r->caldera_adapter->max_rank(), 8);
  EXPECT_EQ(r->weights->token_embedding->format(), MatrixFormat::kQuant);
  EXPECT_EQ(r->weights->output.get(), r->weights->token_embedding.get());
  const double q_only = Nll(r->weights), with_lr = Nll(r->weights, r->caldera_adapter.get(), 8);
  EXPECT_LT(with_lr, q_only);
  // Methods that need calibration refuse to run without it.
  o.method = BaseMethod::kGptq;
  o.bits = 4;
  EXPECT_FALSE(CompressModel(**fp_, nullptr, o, pool_).ok());
}

}  // namespace
}  // namespace eora::compress

// ---- The CLI end to end (skipped when the eora binary is not built) -----------------

namespace eora::cli_test {

using testing::Sh;
using testing::ShResult;

TEST(Cli, CompressFitAdapterPerplexity) {
  const std::string eora = std::string(EORA_BINARY_DIR) + "/bin/eora";
  if (!std::filesystem::exists(eora)) GTEST_SKIP() << eora << " not built";
  const std::string model = testing::Stories260kPath();
  const std::string text = testing::SourcePath("tests/data/tinystories/valid-100k.txt");
  const std::string dir = testing::MakeTempDir("cli");
  const std::string common = " --threads 2 --json";
  ShResult r = Sh(eora + " compress --model " + model + " --method rtn --bits 3 --out " + dir + "/base" + common);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("\"method\": \"rtn\""), std::string::npos) << r.out;
  r = Sh(eora + " fit-adapter --model " + model + " --compressed " + dir + "/base --method eora --rank 4" +
         " --adapter-bits 4 --calib " + text + " --calib-seqs 8 --heldout-seqs 2 --seq-len 64 --out " +
         dir + "/adapter" + common);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("\"profile\": [{\"rank\": 1"), std::string::npos) << r.out;
  auto ppl = [&](const std::string& extra) {
    ShResult p = Sh(eora + " perplexity --compressed " + dir + "/base --text " + text +
               " --max-bytes 4000 --ctx 128" + extra + common);
    EXPECT_EQ(p.rc, 0) << p.out;
    const size_t at = p.out.find("\"ppl\": ");
    return at == std::string::npos ? 0.0 : std::stod(p.out.substr(at + 7));
  };
  const double base = ppl(""), full = ppl(" --adapter " + dir + "/adapter"),
               r2 = ppl(" --adapter " + dir + "/adapter --rank 2");
  EXPECT_GT(base, 1.0);
  EXPECT_LT(full, base);
  EXPECT_NE(r2, full);
  // --model alongside --compressed only checks the architecture.
  EXPECT_EQ(ppl(" --model " + model), base);
  // Usage errors exit 2, runtime failures 1.
  EXPECT_EQ(Sh(eora + " fit-adapter --model " + model).rc, 2);
  EXPECT_EQ(Sh(eora + " compress --model " + model + " --method gptq --out " + dir + "/x").rc, 2);
  EXPECT_EQ(Sh(eora + " perplexity --compressed " + dir + "/base --text " + text + " --adapter " +
               dir + "/adapter --rank 5").rc, 2);
  EXPECT_EQ(Sh(eora + " perplexity --compressed " + dir + "/adapter --text " + text).rc, 1);
  EXPECT_EQ(Sh(eora + " compress --model " + model + " --method rtn --out " + dir + "/base").rc, 1)
      << "refuses to overwrite";
}

}  // namespace eora::cli_test
