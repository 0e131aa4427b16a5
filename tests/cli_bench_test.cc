// `eora bench` end to end: the JSON it prints and its usage errors (skipped when
// the eora binary is not built).
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "tests/test_util.h"

namespace eora {
namespace {

using testing::Sh;
using testing::ShResult;

// The number after "key": in a one-line JSON object, or NaN when absent.
double JsonNumber(const std::string& json, const std::string& key) {
  const std::string k = "\"" + key + "\": ";
  const size_t at = json.find(k);
  if (at == std::string::npos) return std::numeric_limits<double>::quiet_NaN();
  return std::stod(json.substr(at + k.size()));
}

const std::string kSmall =
    " bench --synthetic stories260k --bits 4 --batch 2 --threads 2 --prompt-tokens 8 --gen-tokens 8 --json";

TEST(CliBench, CompareBaseReportsBothSidesFromOneRun) {
  const std::string eora = testing::EoraCliPath();
  if (eora.empty()) GTEST_SKIP() << "bin/eora not built";
  const ShResult r = Sh(eora + kSmall + " --reps 4 --lora-rank 8 --lora-bits 3 --compare-base");
  ASSERT_EQ(r.rc, 0) << r.out;
  for (const char* key : {"decode_tok_s", "base_decode_tok_s", "prefill_tok_s", "base_prefill_tok_s"})
    EXPECT_GT(JsonNumber(r.out, key), 0.0) << key << " in " << r.out;
  // The overheads are ratios of measured times: finite, and no side ran 100x the other.
  for (const char* key : {"lora_decode_overhead", "lora_prefill_overhead"}) {
    const double v = JsonNumber(r.out, key);
    EXPECT_GT(v, -0.99) << key << " in " << r.out;
    EXPECT_LT(v, 100.0) << key << " in " << r.out;
  }
  // The adapter's bytes come on top of the model's.
  EXPECT_GT(JsonNumber(r.out, "weight_bytes"), JsonNumber(r.out, "base_weight_bytes")) << r.out;

  // Without --compare-base none of the paired fields are printed.
  const ShResult plain = Sh(eora + kSmall + " --reps 1 --lora-rank 8");
  ASSERT_EQ(plain.rc, 0) << plain.out;
  EXPECT_EQ(plain.out.find("base_decode_tok_s"), std::string::npos) << plain.out;
  EXPECT_GT(JsonNumber(plain.out, "decode_tok_s"), 0.0) << plain.out;
}

TEST(CliBench, FactorGroupSizeIsTheCompressorsByDefault) {
  const std::string eora = testing::EoraCliPath();
  if (eora.empty()) GTEST_SKIP() << "bin/eora not built";
  const std::string lr = " --reps 1 --gen-tokens 2 --lora-rank 16 --lora-bits 4";
  const ShResult def = Sh(eora + kSmall + lr);
  const ShResult g64 = Sh(eora + kSmall + lr + " --lora-group-size 64");
  const ShResult row = Sh(eora + kSmall + lr + " --lora-group-size 0");
  ASSERT_EQ(def.rc, 0) << def.out;
  ASSERT_EQ(g64.rc, 0) << g64.out;
  ASSERT_EQ(row.rc, 0) << row.out;
  EXPECT_EQ(JsonNumber(def.out, "lora_group_size"), 64.0) << def.out;
  EXPECT_EQ(JsonNumber(def.out, "weight_bytes"), JsonNumber(g64.out, "weight_bytes"));
  // stories260k's rows of 64 and 172 columns: groups of 64 hold more scales than
  // one group per row, so the factors read more bytes.
  EXPECT_GT(JsonNumber(g64.out, "weight_bytes"), JsonNumber(row.out, "weight_bytes")) << g64.out << row.out;
}

TEST(CliBench, SeveralAdaptersInOneBatchReadEachAdaptersBytes) {
  const std::string eora = testing::EoraCliPath();
  if (eora.empty()) GTEST_SKIP() << "bin/eora not built";
  const std::string lr = " --reps 1 --gen-tokens 2 --lora-rank 8 --lora-bits 4 --compare-base";
  const ShResult one = Sh(eora + kSmall + lr);
  const ShResult two = Sh(eora + kSmall + lr + " --lora-adapters 2");
  ASSERT_EQ(one.rc, 0) << one.out;
  ASSERT_EQ(two.rc, 0) << two.out;
  EXPECT_EQ(JsonNumber(one.out, "lora_adapters"), 1.0) << one.out;
  EXPECT_EQ(JsonNumber(two.out, "lora_adapters"), 2.0) << two.out;
  const double base = JsonNumber(one.out, "base_weight_bytes");
  EXPECT_EQ(JsonNumber(two.out, "base_weight_bytes"), base);
  // The batch's two sequences use two adapters of the same size: twice the bytes.
  EXPECT_EQ(JsonNumber(two.out, "weight_bytes") - base, 2 * (JsonNumber(one.out, "weight_bytes") - base));
  EXPECT_GT(JsonNumber(two.out, "decode_tok_s"), 0.0) << two.out;
}

TEST(CliBench, UsageErrorsExit2) {
  const std::string eora = testing::EoraCliPath();
  if (eora.empty()) GTEST_SKIP() << "bin/eora not built";
  EXPECT_EQ(Sh(eora + kSmall + " --compare-base").rc, 2);  // no --lora-rank
  EXPECT_EQ(Sh(eora + kSmall + " --lora-rank -1").rc, 2);
  EXPECT_EQ(Sh(eora + kSmall + " --reps 0").rc, 2);
  EXPECT_EQ(Sh(eora + kSmall + " --lora-rank 4 --lora-group-size 48").rc, 2);
  EXPECT_EQ(Sh(eora + kSmall + " --lora-rank 4 --lora-bits 7").rc, 2);
  EXPECT_EQ(Sh(eora + kSmall + " --lora-rank 4 --lora-adapters 3").rc, 2);  // more than --batch 2
  EXPECT_EQ(Sh(eora + kSmall + " --lora-adapters 2").rc, 2);                // no --lora-rank
  EXPECT_EQ(Sh(eora + " bench --synthetic nosuchmodel").rc, 2);
  EXPECT_EQ(Sh(eora + " bench").rc, 2);  // neither --model nor --synthetic
}

}  // namespace
}  // namespace eora
