#include "engine/synthetic.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace eora {

absl::StatusOr<ModelConfig> SyntheticConfig(const std::string& name) {
  ModelConfig c;
  c.max_seq_len = 2048;
  if (name == "stories260k") {
    c.dim = 64, c.n_layers = 5, c.n_heads = 8, c.n_kv_heads = 4, c.ffn_dim = 172, c.vocab_size = 512;
    c.max_seq_len = 512;
    c.tied_embeddings = true;
  } else if (name == "stories110m") {
    c.dim = 768, c.n_layers = 12, c.n_heads = 12, c.n_kv_heads = 12, c.ffn_dim = 2048,
    c.vocab_size = 32000;
    c.max_seq_len = 1024;
  } else if (name == "llama2-7b") {
    c.dim = 4096, c.n_layers = 32, c.n_heads = 32, c.n_kv_heads = 32, c.ffn_dim = 11008,
    c.vocab_size = 32000;
    c.max_seq_len = 4096;
  } else if (name == "llama3-8b") {
    c.dim = 4096, c.n_layers = 32, c.n_heads = 32, c.n_kv_heads = 8, c.ffn_dim = 14336,
    c.vocab_size = 128256;
    c.max_seq_len = 8192;
    c.rope_theta = 500000.f;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown synthetic model '", name, "' (stories260k, stories110m, llama2-7b, llama3-8b)"));
  }
  c.head_dim = c.dim / c.n_heads;
  c.architecture = "llama";
  return c;
}

absl::StatusOr<std::unique_ptr<Matrix>> MakeMatrix(const float* w, int rows, int cols,
                                                   const WeightStorage& s) {
  if (s.sparse24) {
    // Keep the two largest-magnitude weights of every group of four.
    std::vector<float> p(w, w + static_cast<size_t>(rows) * cols);
    for (int r = 0; r < rows; ++r)
      for (int g = 0; g + 4 <= cols; g += 4) {
        float* v = p.data() + static_cast<size_t>(r) * cols + g;
        int a = 0, b = 1;
        if (std::fabs(v[b]) > std::fabs(v[a])) std::swap(a, b);
        for (int i = 2; i < 4; ++i) {
          if (std::fabs(v[i]) > std::fabs(v[a])) {
            b = a;
            a = i;
          } else if (std::fabs(v[i]) > std::fabs(v[b])) {
            b = i;
          }
        }
        for (int i = 0; i < 4; ++i)
          if (i != a && i != b) v[i] = 0.f;
      }
    if (s.bits >= 16) return MakeSparse24Matrix(rows, cols, p.data());
    return MakeSparse24QuantMatrix(rows, cols, p.data(), QuantSpec{s.bits, s.group_size});
  }
  switch (s.bits) {
    case 32: return MakeDenseMatrixFromF32(DType::kF32, rows, cols, w);
    case 16: return MakeDenseMatrixFromF32(DType::kF16, rows, cols, w);
    case 2:
    case 3:
    case 4: return MakeQuantizedMatrix(QuantizeRtn(w, rows, cols, QuantSpec{s.bits, s.group_size}));
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported weight bits ", s.bits, " (32, 16, 4, 3 or 2)"));
  }
}

namespace {

// Uniform in [-a, a] with standard deviation `stddev` (a = stddev * sqrt(3)), from
// splitmix64 seeded by `rng`: fast enough for billions of weights.
void Fill(std::mt19937_64& rng, float stddev, std::vector<float>* v) {
  uint64_t state = rng();
  const float a = stddev * 1.7320508f;
  for (auto& x : *v) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    x = (2.f * u - 1.f) * a;
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<ModelWeights>> MakeSyntheticModel(const ModelConfig& c,
                                                                 const WeightStorage& storage,
                                                                 uint64_t seed) {
  auto m = std::make_shared<ModelWeights>();
  m->config = c;
  m->source = "synthetic";
  std::mt19937_64 rng(seed);
  std::vector<float> buf;
  buf.resize(static_cast<size_t>(c.vocab_size) * c.dim);
  Fill(rng, 0.02f, &buf);
  m->token_embedding = MakeDenseMatrixFromF32(DType::kF32, c.vocab_size, c.dim, buf.data());
  if (c.tied_embeddings && storage.bits == 32 && !storage.sparse24) {
    m->output = m->token_embedding;
  } else {
    if (!c.tied_embeddings) Fill(rng, 0.02f, &buf);
    ASSIGN_OR_RETURN(m->output, MakeMatrix(buf.data(), c.vocab_size, c.dim, storage));
  }
  m->output_norm.assign(c.dim, 1.f);
  const int shapes[kNumModules][2] = {{c.q_dim(), c.dim}, {c.kv_dim(), c.dim}, {c.kv_dim(), c.dim},
                                      {c.dim, c.q_dim()}, {c.ffn_dim, c.dim},  {c.ffn_dim, c.dim},
                                      {c.dim, c.ffn_dim}};
  m->layers.resize(c.n_layers);
  for (auto& l : m->layers) {
    l.attn_norm.assign(c.dim, 1.f);
    l.ffn_norm.assign(c.dim, 1.f);
    for (int i = 0; i < kNumModules; ++i) {
      buf.resize(static_cast<size_t>(shapes[i][0]) * shapes[i][1]);
      Fill(rng, 0.02f, &buf);
      ASSIGN_OR_RETURN(l.linear[i], MakeMatrix(buf.data(), shapes[i][0], shapes[i][1], storage));
    }
  }
  RETURN_IF_ERROR(m->Validate());
  return m;
}

absl::StatusOr<std::shared_ptr<ModelWeights>> ConvertModelStorage(const ModelWeights& w,
                                                                  const WeightStorage& storage) {
  auto m = std::make_shared<ModelWeights>();
  m->config = w.config;
  m->token_embedding = w.token_embedding;
  m->output_norm = w.output_norm;
  m->tokenizer = w.tokenizer;
  m->source = w.source;
  auto conv = [&](const Matrix& src) -> absl::StatusOr<std::shared_ptr<const Matrix>> {
    std::vector<float> f = src.Dequantize();
    ASSIGN_OR_RETURN(auto mat, MakeMatrix(f.data(), src.rows(), src.cols(), storage));
    return std::shared_ptr<const Matrix>(std::move(mat));
  };
  ASSIGN_OR_RETURN(m->output, conv(*w.output));
  m->layers.resize(w.layers.size());
  for (size_t i = 0; i < w.layers.size(); ++i) {
    m->layers[i].attn_norm = w.layers[i].attn_norm;
    m->layers[i].ffn_norm = w.layers[i].ffn_norm;
    for (int j = 0; j < kNumModules; ++j) {
      ASSIGN_OR_RETURN(m->layers[i].linear[j], conv(*w.layers[i].linear[j]));
    }
  }
  return m;
}

absl::StatusOr<std::shared_ptr<const LowRankAdapter>> MakeRandomAdapter(
    const std::string& name, const ModelConfig& c, int rank, const WeightStorage& storage,
    uint64_t seed, float scale) {
  if (rank <= 0) return absl::InvalidArgumentError("rank must be positive");
  std::mt19937_64 rng(seed);
  const int in_dims[kNumModules] = {c.dim, c.dim, c.dim, c.q_dim(), c.dim, c.dim, c.ffn_dim};
  const int out_dims[kNumModules] = {c.q_dim(), c.kv_dim(), c.kv_dim(), c.dim,
                                     c.ffn_dim, c.ffn_dim,  c.dim};
  WeightStorage fs = storage;
  fs.sparse24 = false;
  std::vector<std::array<LowRankFactors, kNumModules>> layers(c.n_layers);
  std::vector<float> buf;
  for (auto& l : layers) {
    for (int m = 0; m < kNumModules; ++m) {
      buf.resize(static_cast<size_t>(rank) * in_dims[m]);
      Fill(rng, scale, &buf);
      ASSIGN_OR_RETURN(auto a, MakeMatrix(buf.data(), rank, in_dims[m], fs));
      buf.resize(static_cast<size_t>(rank) * out_dims[m]);
      Fill(rng, scale, &buf);
      ASSIGN_OR_RETURN(auto bt, MakeMatrix(buf.data(), rank, out_dims[m], fs));
      l[m].a = std::move(a);
      l[m].bt = std::move(bt);
    }
  }
  return LowRankAdapter::Create(name, c, std::move(layers));
}

}  // namespace eora
