// Hyper-parameters of a Llama-family decoder.
#pragma once

#include <string>

namespace eora {

// How rotary embeddings pair up the dimensions of a head.
enum class RopeStyle {
  // Pairs (2i, 2i+1): llama.cpp / GGUF (whose q/k weights are stored permuted so
  // that this matches the original Meta checkpoints).
  kInterleaved,
  // Pairs (i, i + head_dim/2), "rotate_half": Hugging Face transformers.
  kHalf,
};

struct ModelConfig {
  std::string architecture = "llama";
  int dim = 0;            // hidden size
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;     // < n_heads for grouped-query attention
  int head_dim = 0;       // dim / n_heads unless the file says otherwise
  int ffn_dim = 0;        // SwiGLU intermediate size
  int vocab_size = 0;
  int max_seq_len = 2048;  // trained context (from metadata)
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeStyle rope_style = RopeStyle::kInterleaved;
  bool tied_embeddings = false;  // output projection shares the token embedding

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
};

}  // namespace eora
