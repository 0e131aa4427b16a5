#!/usr/bin/python3
"""Independent float64 numpy reference for EoRA Serve's Llama path.

Written from scratch (no project code reused) so that the C++ engine can be
checked against it:

  * a GGUF v3 reader (metadata of all types, tensor infos, F32/F16 tensors),
  * the SentencePiece-style BPE tokenizer stored in GGUF metadata,
  * the Llama forward pass (RMSNorm, GQA attention with llama.cpp "normal"
    RoPE on interleaved pairs, SwiGLU FFN, tied output), in float64,
  * perplexity under the 'full' and 'llama-cpp' protocols,
  * greedy generation from BOS.

CLI:
  llama_ref.py perplexity --model M --text F [--max-bytes N] --ctx C --protocol full|llama-cpp
  llama_ref.py generate   --model M --max-tokens N
  llama_ref.py tokenize   --model M --text F [--max-bytes N]

Run with an interpreter that has numpy (e.g. /usr/bin/python3).
"""

import argparse
import heapq
import json
import math
import os
import struct
import sys

# Small matrices: BLAS threading only adds contention on a small machine.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

# --------------------------------------------------------------------------
# GGUF reader
# --------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"

# metadata value types
_T_UINT8, _T_INT8, _T_UINT16, _T_INT16, _T_UINT32, _T_INT32, _T_FLOAT32 = range(7)
_T_BOOL, _T_STRING, _T_ARRAY, _T_UINT64, _T_INT64, _T_FLOAT64 = range(7, 13)

_SCALAR_FMT = {
    _T_UINT8: "<B", _T_INT8: "<b", _T_UINT16: "<H", _T_INT16: "<h",
    _T_UINT32: "<I", _T_INT32: "<i", _T_FLOAT32: "<f", _T_BOOL: "<?",
    _T_UINT64: "<Q", _T_INT64: "<q", _T_FLOAT64: "<d",
}
_SCALAR_NP = {
    _T_UINT8: "<u1", _T_INT8: "<i1", _T_UINT16: "<u2", _T_INT16: "<i2",
    _T_UINT32: "<u4", _T_INT32: "<i4", _T_FLOAT32: "<f4", _T_BOOL: "?",
    _T_UINT64: "<u8", _T_INT64: "<i8", _T_FLOAT64: "<f8",
}

# ggml tensor types this reader can load
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1


class GGUFError(Exception):
    pass


class _Reader:
    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.buf):
            raise GGUFError("truncated GGUF file at offset %d" % self.pos)
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, t):
        fmt = _SCALAR_FMT[t]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def u32(self):
        return self.scalar(_T_UINT32)

    def u64(self):
        return self.scalar(_T_UINT64)

    def string(self):
        n = self.u64()
        return bytes(self.take(n)).decode("utf-8", errors="surrogateescape")

    def value(self, t):
        if t in _SCALAR_FMT:
            return self.scalar(t)
        if t == _T_STRING:
            return self.string()
        if t == _T_ARRAY:
            et = self.u32()
            n = self.u64()
            if et in _SCALAR_NP:
                dt = np.dtype(_SCALAR_NP[et])
                arr = np.frombuffer(self.take(n * dt.itemsize), dtype=dt)
                return arr.tolist()
            return [self.value(et) for _ in range(n)]
        raise GGUFError("unknown GGUF metadata type %d" % t)


class GGUF:
    """Parsed GGUF file: .version, .metadata (dict), .tensor_infos, .tensor(name)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.buf = f.read()
        r = _Reader(memoryview(self.buf))
        if bytes(r.take(4)) != GGUF_MAGIC:
            raise GGUFError("%s: not a GGUF file" % path)
        self.version = r.u32()
        if self.version not in (2, 3):
            raise GGUFError("unsupported GGUF version %d" % self.version)
        n_tensors = r.u64()
        n_kv = r.u64()
        self.metadata = {}
        for _ in range(n_kv):
            key = r.string()
            t = r.u32()
            self.metadata[key] = r.value(t)
        self.tensor_infos = {}
        order = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.u32()
            ne = [r.u64() for _ in range(n_dims)]
            ttype = r.u32()
            offset = r.u64()
            self.tensor_infos[name] = (ne, ttype, offset)
            order.append(name)
        self.tensor_order = order
        align = int(self.metadata.get("general.alignment", 32))
        self.data_offset = (r.pos + align - 1) // align * align

    def has(self, name):
        return name in self.tensor_infos

    def tensor(self, name):
        """Tensor as a numpy float64 array with shape reversed from ne
        (ne=[cols, rows] -> row-major [rows][cols])."""
        ne, ttype, offset = self.tensor_infos[name]
        n = 1
        for d in ne:
            n *= d
        start = self.data_offset + offset
        if ttype == GGML_TYPE_F32:
            dt = np.dtype("<f4")
        elif ttype == GGML_TYPE_F16:
            dt = np.dtype("<f2")
        else:
            raise GGUFError("tensor %s: unsupported ggml type %d" % (name, ttype))
        arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=start)
        return arr.astype(np.float64).reshape(tuple(reversed(ne)))


# --------------------------------------------------------------------------
# SentencePiece-style BPE tokenizer
# --------------------------------------------------------------------------

SPACE_MARK = "\u2581"
TOKTYPE_BYTE = 6


def _utf8_chunks(data):
    """Split raw bytes into UTF-8 characters using the lead byte's length
    (like llama.cpp); a truncated tail is kept as a shorter chunk."""
    out = []
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            L = 1
        elif (b & 0xE0) == 0xC0:
            L = 2
        elif (b & 0xF0) == 0xE0:
            L = 3
        elif (b & 0xF8) == 0xF0:
            L = 4
        else:
            L = 1
        out.append(data[i:min(i + L, n)])
        i += L
    return out


class Tokenizer:
    def __init__(self, gguf):
        md = gguf.metadata
        self.tokens = list(md["tokenizer.ggml.tokens"])
        self.scores = list(md.get("tokenizer.ggml.scores", [0.0] * len(self.tokens)))
        self.types = list(md.get("tokenizer.ggml.token_type", [1] * len(self.tokens)))
        self.bos = int(md.get("tokenizer.ggml.bos_token_id", 1))
        self.eos = int(md.get("tokenizer.ggml.eos_token_id", 2))
        self.unk = int(md.get("tokenizer.ggml.unknown_token_id", 0))
        self.add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
        # pieces are compared as UTF-8 bytes
        self.piece_bytes = [t.encode("utf-8", errors="surrogateescape") for t in self.tokens]
        self.vocab = {}
        for i, p in enumerate(self.piece_bytes):
            self.vocab.setdefault(p, i)
        self.byte_tok = {}
        for i, t in enumerate(self.tokens):
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                try:
                    self.byte_tok[int(t[3:5], 16)] = i
                except ValueError:
                    pass

    def encode(self, text, add_bos=False):
        """text: str or bytes. Returns list of token ids."""
        if isinstance(text, str):
            data = text.encode("utf-8")
        else:
            data = bytes(text)
        if self.add_space_prefix:
            data = b" " + data
        data = data.replace(b" ", SPACE_MARK.encode("utf-8"))
        syms = _utf8_chunks(data)
        n = len(syms)
        ids = [self.bos] if add_bos else []
        if n == 0:
            return ids
        text_of = list(syms)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        alive = [True] * n
        heap = []
        vocab = self.vocab
        scores = self.scores

        def push(left, right):
            s = text_of[left] + text_of[right]
            tid = vocab.get(s)
            if tid is not None:
                # max score first, ties: leftmost
                heapq.heappush(heap, (-scores[tid], left, right, s))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _, left, right, s = heapq.heappop(heap)
            # lazy invalidation: pair must still be adjacent and unchanged
            if not alive[left] or not alive[right] or nxt[left] != right:
                continue
            if text_of[left] + text_of[right] != s:
                continue
            text_of[left] = s
            alive[right] = False
            nr = nxt[right]
            nxt[left] = nr
            if nr != -1:
                prev[nr] = left
            pl = prev[left]
            if pl != -1:
                push(pl, left)
            if nr != -1:
                push(left, nr)
        i = 0
        while i != -1:
            piece = text_of[i]
            tid = vocab.get(piece)
            if tid is not None:
                ids.append(tid)
            else:
                for b in piece:
                    ids.append(self.byte_tok.get(b, self.unk))
            i = nxt[i]
        return ids

    def piece_raw(self, tid):
        """Bytes for one token (byte pieces -> the byte, U+2581 -> space)."""
        t = self.tokens[tid]
        if tid in self._byte_ids():
            return bytes([int(t[3:5], 16)])
        return t.replace(SPACE_MARK, " ").encode("utf-8", errors="surrogateescape")

    def _byte_ids(self):
        if not hasattr(self, "_byte_id_set"):
            self._byte_id_set = {v: k for k, v in self.byte_tok.items()}
        return self._byte_id_set

    def decode(self, ids, prev_token=None):
        """Decode generated ids; a leading space right after BOS is stripped."""
        out = bytearray()
        prev = prev_token
        for tid in ids:
            p = self.piece_raw(tid)
            if prev == self.bos and p.startswith(b" "):
                p = p[1:]
            out += p
            prev = tid
        return out.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------
# Llama model (float64)
# --------------------------------------------------------------------------

class Llama:
    def __init__(self, gguf):
        md = gguf.metadata
        arch = md.get("general.architecture", "llama")
        self.arch = arch
        g = lambda k, d=None: md.get("%s.%s" % (arch, k), d)
        self.dim = int(g("embedding_length"))
        self.n_layers = int(g("block_count"))
        self.n_heads = int(g("attention.head_count"))
        self.n_kv_heads = int(g("attention.head_count_kv", self.n_heads))
        self.ffn = int(g("feed_forward_length"))
        self.eps = float(g("attention.layer_norm_rms_epsilon", 1e-5))
        self.rope_base = float(g("rope.freq_base", 10000.0))
        self.head_dim = self.dim // self.n_heads
        self.rope_dim = int(g("rope.dimension_count", self.head_dim))
        self.n_ctx_train = int(g("context_length", 2048))
        self.tok_embd = gguf.tensor("token_embd.weight")          # [vocab][dim]
        self.vocab_size = self.tok_embd.shape[0]
        self.out_norm = gguf.tensor("output_norm.weight")
        if gguf.has("output.weight"):
            self.output = gguf.tensor("output.weight")             # [vocab][dim]
        else:
            self.output = self.tok_embd
        self.layers = []
        for i in range(self.n_layers):
            t = lambda n: gguf.tensor("blk.%d.%s.weight" % (i, n))
            self.layers.append(dict(
                attn_norm=t("attn_norm"),
                wq=t("attn_q").T.copy(),      # stored [out][in]; keep x @ W form
                wk=t("attn_k").T.copy(),
                wv=t("attn_v").T.copy(),
                wo=t("attn_output").T.copy(),
                ffn_norm=t("ffn_norm"),
                w_gate=t("ffn_gate").T.copy(),
                w_up=t("ffn_up").T.copy(),
                w_down=t("ffn_down").T.copy(),
            ))
        self._rope_cache = {}

    def _rmsnorm(self, x, w):
        ms = np.mean(x * x, axis=-1, keepdims=True)
        return x / np.sqrt(ms + self.eps) * w

    def _rope_tables(self, T):
        c = self._rope_cache.get(T)
        if c is None:
            half = self.rope_dim // 2
            i = np.arange(half, dtype=np.float64)
            inv_freq = self.rope_base ** (-2.0 * i / self.head_dim)
            ang = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T][half]
            c = (np.cos(ang), np.sin(ang))
            self._rope_cache[T] = c
        return c

    def _rope(self, x):
        """x: [B][T][H][head_dim]; llama.cpp normal rope on interleaved pairs
        (2i, 2i+1), theta = pos * base^(-2i/head_dim)."""
        T = x.shape[1]
        cos, sin = self._rope_tables(T)
        cos = cos[None, :, None, :]
        sin = sin[None, :, None, :]
        rd = self.rope_dim
        x0 = x[..., 0:rd:2]
        x1 = x[..., 1:rd:2]
        out = x.copy()
        out[..., 0:rd:2] = x0 * cos - x1 * sin
        out[..., 1:rd:2] = x0 * sin + x1 * cos
        return out

    def forward(self, tokens, rows=None):
        """Logits [T][vocab] for one sequence starting at position 0 (causal)."""
        return self.forward_batch([tokens], rows)[0]

    def forward_batch(self, batch, rows=None):
        """Logits [B][T][vocab] (or [B][len(rows)][vocab] when rows is given)
        for B equal-length sequences, each starting at position 0, causal."""
        tokens = np.asarray(batch, dtype=np.int64)
        B, T = tokens.shape
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        rep = H // KV
        x = self.tok_embd[tokens].reshape(B * T, self.dim)
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        scale = 1.0 / math.sqrt(D)
        for L in self.layers:
            h = self._rmsnorm(x, L["attn_norm"])
            q = self._rope((h @ L["wq"]).reshape(B, T, H, D))
            k = self._rope((h @ L["wk"]).reshape(B, T, KV, D))
            v = (h @ L["wv"]).reshape(B, T, KV, D)
            # query head hh = g*rep + r uses kv head g (llama.cpp broadcast)
            qg = q.reshape(B, T, KV, rep, D).transpose(0, 2, 3, 1, 4)  # [B][KV][rep][T][D]
            qg = qg.reshape(B, KV, rep * T, D)
            kg = k.transpose(0, 2, 3, 1)                              # [B][KV][D][T]
            vg = v.transpose(0, 2, 1, 3)                              # [B][KV][T][D]
            s = (qg @ kg).reshape(B, KV, rep, T, T) * scale + mask
            s -= s.max(axis=-1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=-1, keepdims=True)
            o = p.reshape(B, KV, rep * T, T) @ vg                     # [B][KV][rep*T][D]
            o = o.reshape(B, KV, rep, T, D).transpose(0, 3, 1, 2, 4).reshape(B * T, H * D)
            x = x + o @ L["wo"]
            h = self._rmsnorm(x, L["ffn_norm"])
            g = h @ L["w_gate"]
            u = h @ L["w_up"]
            act = g / (1.0 + np.exp(-g)) * u
            x = x + act @ L["w_down"]
        x = x.reshape(B, T, self.dim)
        if rows is not None:
            x = x[:, rows, :]
        x = self._rmsnorm(x, self.out_norm)
        return x @ self.output.T


def _log_softmax(logits):
    m = logits.max(axis=-1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------
# Perplexity and generation
# --------------------------------------------------------------------------

BATCH = 8  # windows evaluated together (same length) in one forward_batch


def perplexity(model, tok, text_tokens, ctx, protocol):
    """Returns dict(tokens=scored tokens, nll=mean NLL, ppl=exp(nll), ...).

    'full': consecutive non-overlapping windows of ctx-1 text tokens (the last
    partial window included), each prefixed with BOS; every token after BOS
    is scored.
    'llama-cpp': all = [BOS] + tokens; n_chunks = len(all) // ctx; chunk i =
    all[i*ctx:(i+1)*ctx] with chunk[0] = BOS; logits rows j in
    [ctx//2, ctx-1) predict chunk[j+1].
    """
    if ctx < 2:
        raise ValueError("ctx must be >= 2")
    if protocol == "full":
        w = ctx - 1
        windows = [[tok.bos] + list(text_tokens[s:s + w])
                   for s in range(0, len(text_tokens), w)]
        rows = None
    elif protocol == "llama-cpp":
        allt = [tok.bos] + list(text_tokens)
        windows = []
        for i in range(len(allt) // ctx):
            chunk = list(allt[i * ctx:(i + 1) * ctx])
            chunk[0] = tok.bos
            windows.append(chunk)
        rows = np.arange(ctx // 2, ctx - 1)
    else:
        raise ValueError("unknown protocol %r" % protocol)
    total = 0.0
    count = 0
    # group windows by length so each batch is rectangular
    by_len = {}
    for win in windows:
        by_len.setdefault(len(win), []).append(win)
    for T, wins in by_len.items():
        r = np.arange(T - 1) if rows is None else rows
        for b in range(0, len(wins), BATCH):
            batch = np.asarray(wins[b:b + BATCH], dtype=np.int64)
            lp = _log_softmax(model.forward_batch(batch, r))   # [B][len(r)][V]
            tgt = batch[:, r + 1]                              # [B][len(r)]
            picked = np.take_along_axis(lp, tgt[:, :, None], axis=2)
            total -= float(picked.sum())
            count += tgt.size
    if count == 0:
        raise ValueError("no tokens scored (text too short for ctx %d)" % ctx)
    nll = total / count
    return {"tokens": count, "nll": nll, "ppl": math.exp(nll),
            "text_tokens": len(text_tokens), "ctx": ctx, "protocol": protocol}


def generate(model, tok, max_tokens, stop_at_eos=True):
    seq = [tok.bos]
    out = []
    for _ in range(max_tokens):
        logits = model.forward(seq)[-1]
        nt = int(np.argmax(logits))
        if stop_at_eos and nt in (tok.eos, tok.bos):
            break
        seq.append(nt)
        out.append(nt)
    return out, tok.decode(out, prev_token=tok.bos)


def read_text(path, max_bytes=None):
    with open(path, "rb") as f:
        data = f.read() if not max_bytes or max_bytes <= 0 else f.read(max_bytes)
    return data


def load(model_path):
    g = GGUF(model_path)
    return g, Tokenizer(g), Llama(g)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("perplexity")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--max-bytes", type=int, default=0)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--protocol", choices=["full", "llama-cpp"], default="full")
    p = sub.add_parser("generate")
    p.add_argument("--model", required=True)
    p.add_argument("--max-tokens", type=int, default=60)
    p = sub.add_parser("tokenize")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--max-bytes", type=int, default=0)
    a = ap.parse_args(argv)

    g, tok, model = load(a.model)
    if a.cmd == "perplexity":
        ids = tok.encode(read_text(a.text, a.max_bytes))
        print(json.dumps(perplexity(model, tok, ids, a.ctx, a.protocol)))
    elif a.cmd == "generate":
        _, text = generate(model, tok, a.max_tokens)
        sys.stdout.write(text + "\n")
    elif a.cmd == "tokenize":
        print(json.dumps(tok.encode(read_text(a.text, a.max_bytes))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
