#include "engine/gguf.h"

#include <bit>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"

static_assert(std::endian::native == std::endian::little,
              "GGUF reader assumes a little-endian host");

namespace eora {
namespace {

constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
constexpr uint64_t kMaxStringLength = uint64_t{1} << 30;

struct GgmlTypeTraits {
  const char* name;
  uint32_t block_size;  // elements per block
  uint32_t type_size;   // bytes per block
};

// Storage sizes of the ggml types (ggml.c type_traits). Ids absent here are unknown.
const GgmlTypeTraits* GgmlTraits(uint32_t type) {
  static const GgmlTypeTraits kTraits[] = {
      {"F32", 1, 4},         // 0
      {"F16", 1, 2},         // 1
      {"Q4_0", 32, 18},      // 2
      {"Q4_1", 32, 20},      // 3
      {nullptr, 0, 0},       // 4 (removed Q4_2)
      {nullptr, 0, 0},       // 5 (removed Q4_3)
      {"Q5_0", 32, 22},      // 6
      {"Q5_1", 32, 24},      // 7
      {"Q8_0", 32, 34},      // 8
      {"Q8_1", 32, 36},      // 9
      {"Q2_K", 256, 84},     // 10
      {"Q3_K", 256, 110},    // 11
      {"Q4_K", 256, 144},    // 12
      {"Q5_K", 256, 176},    // 13
      {"Q6_K", 256, 210},    // 14
      {"Q8_K", 256, 292},    // 15
      {"IQ2_XXS", 256, 66},  // 16
      {"IQ2_XS", 256, 74},   // 17
      {"IQ3_XXS", 256, 98},  // 18
      {"IQ1_S", 256, 50},    // 19
      {"IQ4_NL", 32, 18},    // 20
      {"IQ3_S", 256, 110},   // 21
      {"IQ2_S", 256, 82},    // 22
      {"IQ4_XS", 256, 136},  // 23
      {"I8", 1, 1},          // 24
      {"I16", 1, 2},         // 25
      {"I32", 1, 4},         // 26
      {"I64", 1, 8},         // 27
      {"F64", 1, 8},         // 28
      {"IQ1_M", 256, 56},    // 29
      {"BF16", 1, 2},        // 30
      {nullptr, 0, 0},       // 31 (removed Q4_0_4_4)
      {nullptr, 0, 0},       // 32 (removed Q4_0_4_8)
      {nullptr, 0, 0},       // 33 (removed Q4_0_8_8)
      {"TQ1_0", 256, 54},    // 34
      {"TQ2_0", 256, 66},    // 35
      {nullptr, 0, 0},       // 36 (removed IQ4_NL_4_4)
      {nullptr, 0, 0},       // 37 (removed IQ4_NL_4_8)
      {nullptr, 0, 0},       // 38 (removed IQ4_NL_8_8)
      {"MXFP4", 32, 17},     // 39
  };
  if (type >= sizeof(kTraits) / sizeof(kTraits[0]) || kTraits[type].name == nullptr) return nullptr;
  return &kTraits[type];
}

// Bytes of one scalar element of a metadata type; 0 for string/array/unknown.
uint64_t ScalarSize(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

bool IsIntegerType(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kUint16:
    case GgufType::kInt16:
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kUint64:
    case GgufType::kInt64:
      return true;
    default:
      return false;
  }
}

bool IsSignedType(GgufType t) {
  return t == GgufType::kInt8 || t == GgufType::kInt16 || t == GgufType::kInt32 ||
         t == GgufType::kInt64;
}

// Decodes one scalar of type `t` at `p` (unaligned) into `v`.
void DecodeScalar(GgufType t, const uint8_t* p, GgufValue* v) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kBool:
      v->u = p[0];
      v->i = static_cast<int64_t>(v->u);
      break;
    case GgufType::kInt8:
      v->i = static_cast<int8_t>(p[0]);
      break;
    case GgufType::kUint16: {
      uint16_t x;
      std::memcpy(&x, p, 2);
      v->u = x;
      v->i = x;
      break;
    }
    case GgufType::kInt16: {
      int16_t x;
      std::memcpy(&x, p, 2);
      v->i = x;
      break;
    }
    case GgufType::kUint32: {
      uint32_t x;
      std::memcpy(&x, p, 4);
      v->u = x;
      v->i = x;
      break;
    }
    case GgufType::kInt32: {
      int32_t x;
      std::memcpy(&x, p, 4);
      v->i = x;
      break;
    }
    case GgufType::kUint64: {
      std::memcpy(&v->u, p, 8);
      v->i = static_cast<int64_t>(v->u);  // only meaningful when it fits (checked on use)
      break;
    }
    case GgufType::kInt64:
      std::memcpy(&v->i, p, 8);
      break;
    case GgufType::kFloat32: {
      float x;
      std::memcpy(&x, p, 4);
      v->f = x;
      break;
    }
    case GgufType::kFloat64:
      std::memcpy(&v->f, p, 8);
      break;
    default:
      break;
  }
  if (IsSignedType(t)) v->u = static_cast<uint64_t>(v->i);
}

// Bounds-checked little-endian reader over the mapped header.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* base, uint64_t size)
      : path_(path), base_(base), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  absl::Status Need(uint64_t n, const std::string& what) const {
    if (n > remaining())
      return absl::InvalidArgumentError(absl::StrCat(path_, ": truncated GGUF file: ", what,
                                                     " needs ", n, " bytes at offset ", pos_,
                                                     " but the file has ", size_, " bytes"));
    return absl::OkStatus();
  }
  const uint8_t* Take(uint64_t n) {  // caller has checked Need(n)
    const uint8_t* p = base_ + pos_;
    pos_ += n;
    return p;
  }
  template <typename T>
  absl::StatusOr<T> Read(const std::string& what) {
    RETURN_IF_ERROR(Need(sizeof(T), what));
    T v;
    std::memcpy(&v, Take(sizeof(T)), sizeof(T));
    return v;
  }
  absl::StatusOr<std::string> ReadString(const std::string& what) {
    const uint64_t at = pos_;
    ASSIGN_OR_RETURN(uint64_t n, Read<uint64_t>(absl::StrCat("length of ", what)));
    if (n > kMaxStringLength || n > remaining())
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": ", what, " at offset ", at, " has length ", n,
                       ", past the end of the file (", size_, " bytes)"));
    const uint8_t* p = Take(n);
    return std::string(reinterpret_cast<const char*>(p), n);
  }

 private:
  const std::string& path_;
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

absl::Status ReadValue(Cursor& c, const std::string& path, const std::string& key, GgufType type,
                       GgufValue* v) {
  v->type = type;
  const std::string what = absl::StrCat("value of key '", key, "'");
  if (type == GgufType::kString) {
    ASSIGN_OR_RETURN(v->str, c.ReadString(what));
    return absl::OkStatus();
  }
  if (type == GgufType::kArray) {
    const uint64_t at = c.pos();
    ASSIGN_OR_RETURN(uint32_t et, c.Read<uint32_t>(absl::StrCat("array type of key '", key, "'")));
    ASSIGN_OR_RETURN(uint64_t n, c.Read<uint64_t>(absl::StrCat("array length of key '", key, "'")));
    v->elem_type = static_cast<GgufType>(et);
    v->count = n;
    if (v->elem_type == GgufType::kArray)
      return absl::UnimplementedError(
          absl::StrCat(path, ": key '", key, "' is an array of arrays (not supported)"));
    if (v->elem_type == GgufType::kString) {
      // Every string needs at least its 8-byte length.
      if (n > c.remaining() / 8)
        return absl::InvalidArgumentError(absl::StrCat(path, ": key '", key, "' at offset ", at,
                                                       " claims ", n,
                                                       " strings, more than the file can hold"));
      v->strings.reserve(n);
      for (uint64_t k = 0; k < n; ++k) {
        ASSIGN_OR_RETURN(std::string s,
                         c.ReadString(absl::StrCat("element ", k, " of key '", key, "'")));
        v->strings.push_back(std::move(s));
      }
      return absl::OkStatus();
    }
    const uint64_t es = ScalarSize(v->elem_type);
    if (es == 0)
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": key '", key, "' has unknown array element type ", et));
    if (n > c.remaining() / es)
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": key '", key, "' at offset ", at, " claims ", n, " elements of ",
                       GgufTypeName(v->elem_type), ", past the end of the file"));
    v->array_data = c.Take(n * es);
    return absl::OkStatus();
  }
  const uint64_t sz = ScalarSize(type);
  if (sz == 0)
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": key '", key, "' has unknown value type ", static_cast<uint32_t>(type)));
  RETURN_IF_ERROR(c.Need(sz, what));
  DecodeScalar(type, c.Take(sz), v);
  if (type == GgufType::kBool && v->u > 1)
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": key '", key, "' has invalid bool value ", v->u));
  return absl::OkStatus();
}

}  // namespace

const char* GgufTypeName(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
      return "uint8";
    case GgufType::kInt8:
      return "int8";
    case GgufType::kUint16:
      return "uint16";
    case GgufType::kInt16:
      return "int16";
    case GgufType::kUint32:
      return "uint32";
    case GgufType::kInt32:
      return "int32";
    case GgufType::kFloat32:
      return "float32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kUint64:
      return "uint64";
    case GgufType::kInt64:
      return "int64";
    case GgufType::kFloat64:
      return "float64";
  }
  return "unknown";
}

const char* GgmlTypeName(uint32_t ggml_type) {
  const GgmlTypeTraits* t = GgmlTraits(ggml_type);
  return t ? t->name : nullptr;
}

std::string GgufTensorInfo::DimsString() const {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  ASSIGN_OR_RETURN(f->file_, MappedFile::Open(path, 24, "GGUF", "24-byte header"));
  RETURN_IF_ERROR(f->Parse());
  return f;
}

absl::Status GgufFile::Parse() {
  Cursor c(path_, file_.data(), file_.size());
  if (std::memcmp(file_.data(), "GGUF", 4) != 0) {
    std::string got;
    for (int k = 0; k < 4; ++k)
      absl::StrAppend(&got, k ? " " : "", static_cast<int>(file_.data()[k]));
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": not a GGUF file (magic bytes ", got, ", expected \"GGUF\")"));
  }
  c.Take(4);
  ASSIGN_OR_RETURN(version_, c.Read<uint32_t>("version"));
  if (version_ != 2 && version_ != 3)
    return absl::UnimplementedError(
        absl::StrCat(path_, ": unsupported GGUF version ", version_, " (supported: 2, 3)"));
  ASSIGN_OR_RETURN(uint64_t n_tensors, c.Read<uint64_t>("tensor count"));
  ASSIGN_OR_RETURN(uint64_t n_kv, c.Read<uint64_t>("metadata count"));
  // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at
  // least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
  if (n_kv > c.remaining() / 13)
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": metadata count ", n_kv, " is impossible for a file of ", file_.size(), " bytes"));
  if (n_tensors > c.remaining() / 24)
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor count ", n_tensors,
                                                   " is impossible for a file of ", file_.size(),
                                                   " bytes"));

  key_order_.reserve(n_kv);
  for (uint64_t k = 0; k < n_kv; ++k) {
    ASSIGN_OR_RETURN(std::string key, c.ReadString(absl::StrCat("metadata key #", k)));
    ASSIGN_OR_RETURN(uint32_t type, c.Read<uint32_t>(absl::StrCat("type of key '", key, "'")));
    GgufValue v;
    RETURN_IF_ERROR(ReadValue(c, path_, key, static_cast<GgufType>(type), &v));
    if (kv_.count(key))
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": duplicate metadata key '", key, "'"));
    key_order_.push_back(key);
    kv_.emplace(std::move(key), std::move(v));
  }

  if (const GgufValue* a = FindKey("general.alignment")) {
    if (!IsIntegerType(a->type) || (IsSignedType(a->type) && a->i <= 0) || a->u == 0 ||
        (a->u & (a->u - 1)) != 0 || a->u > (uint64_t{1} << 30))
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": general.alignment must be a power-of-two integer, got ",
                       GgufTypeName(a->type), " ", a->u));
    alignment_ = a->u;
  } else {
    alignment_ = kDefaultAlignment;
  }

  tensors_.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    ASSIGN_OR_RETURN(t.name, c.ReadString(absl::StrCat("name of tensor #", k)));
    const std::string tn = absl::StrCat("tensor '", t.name, "'");
    ASSIGN_OR_RETURN(uint32_t n_dims, c.Read<uint32_t>(absl::StrCat("dimension count of ", tn)));
    if (n_dims == 0 || n_dims > kMaxDims)
      return absl::InvalidArgumentError(absl::StrCat(path_, ": ", tn, " has ", n_dims,
                                                     " dimensions (must be 1..", kMaxDims, ")"));
    uint64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ASSIGN_OR_RETURN(uint64_t ne, c.Read<uint64_t>(absl::StrCat("dimension ", d, " of ", tn)));
      t.dims.push_back(ne);
    }
    for (uint64_t ne : t.dims) {
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (ne != 0 && n_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ne))
        return absl::InvalidArgumentError(
            absl::StrCat(path_, ": ", tn, " dimensions ", t.DimsString(), " overflow"));
      n_elements *= ne;
    }
    t.n_elements = n_elements;
    ASSIGN_OR_RETURN(t.ggml_type, c.Read<uint32_t>(absl::StrCat("type of ", tn)));
    ASSIGN_OR_RETURN(t.offset, c.Read<uint64_t>(absl::StrCat("data offset of ", tn)));
    const GgmlTypeTraits* tr = GgmlTraits(t.ggml_type);
    if (tr == nullptr)
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": ", tn, " has unknown ggml type ", t.ggml_type));
    if (t.dims[0] % tr->block_size != 0)
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": ", tn, " of type ", tr->name, " has row length ", t.dims[0],
                       ", not a multiple of its block size ", tr->block_size));
    const uint64_t blocks = n_elements / tr->block_size;
    if (blocks > std::numeric_limits<uint64_t>::max() / tr->type_size)
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": ", tn, " byte size overflows (dims ", t.DimsString(), ")"));
    t.byte_size = blocks * tr->type_size;
    if (t.offset % alignment_ != 0)
      return absl::InvalidArgumentError(absl::StrCat(path_, ": ", tn, " data offset ", t.offset,
                                                     " is not a multiple of the alignment ",
                                                     alignment_));
    if (tensor_index_.count(t.name))
      return absl::InvalidArgumentError(absl::StrCat(path_, ": duplicate tensor '", t.name, "'"));
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  const uint64_t header_end = c.pos();
  data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;
  if (data_offset_ > file_.size() && !tensors_.empty())
    return absl::InvalidArgumentError(absl::StrCat(path_, ": truncated GGUF file: data section at ",
                                                   data_offset_, " is past the end of the file (",
                                                   file_.size(), " bytes)"));
  const uint64_t data_size = data_offset_ <= file_.size() ? file_.size() - data_offset_ : 0;
  for (GgufTensorInfo& t : tensors_) {
    if (t.offset > data_size || t.byte_size > data_size - t.offset)
      return absl::InvalidArgumentError(absl::StrCat(
          path_, ": tensor '", t.name, "' data [", t.offset, ", +", t.byte_size,
          ") relative to the data section at ", data_offset_, " extends past the end of the file (",
          file_.size(), " bytes; truncated or bad offset)"));
    t.data = file_.data() + data_offset_ + t.offset;
  }
  return absl::OkStatus();
}

bool GgufFile::HasKey(std::string_view key) const { return FindKey(key) != nullptr; }

const GgufValue* GgufFile::FindKey(std::string_view key) const {
  auto it = kv_.find(std::string(key));
  return it == kv_.end() ? nullptr : &it->second;
}

absl::StatusOr<const GgufValue*> GgufFile::Lookup(std::string_view key, const char* wanted) const {
  const GgufValue* v = FindKey(key);
  if (v == nullptr)
    return absl::NotFoundError(
        absl::StrCat(path_, ": metadata key '", std::string(key), "' (", wanted, ") not found"));
  return v;
}

namespace {
absl::Status WrongType(const std::string& path, std::string_view key, const GgufValue& v,
                       const char* wanted) {
  std::string have = GgufTypeName(v.type);
  if (v.type == GgufType::kArray) have = absl::StrCat("array of ", GgufTypeName(v.elem_type));
  return absl::InvalidArgumentError(absl::StrCat(path, ": metadata key '", std::string(key),
                                                 "' has type ", have, ", expected ", wanted));
}
}  // namespace

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key, "string"));
  if (v->type != GgufType::kString) return WrongType(path_, key, *v, "string");
  return v->str;
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key, "integer"));
  if (!IsIntegerType(v->type)) return WrongType(path_, key, *v, "integer");
  if (v->type == GgufType::kUint64 && v->u > static_cast<uint64_t>(INT64_MAX))
    return absl::InvalidArgumentError(absl::StrCat(path_, ": metadata key '", std::string(key),
                                                   "' value ", v->u, " does not fit in int64"));
  return v->i;
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key, "float"));
  if (v->type == GgufType::kFloat32 || v->type == GgufType::kFloat64) return v->f;
  if (IsIntegerType(v->type))
    return IsSignedType(v->type) ? static_cast<double>(v->i) : static_cast<double>(v->u);
  return WrongType(path_, key, *v, "float");
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key, "bool"));
  if (v->type != GgufType::kBool) return WrongType(path_, key, *v, "bool");
  return v->u != 0;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key, "array of string"));
  if (v->type != GgufType::kArray || v->elem_type != GgufType::kString)
    return WrongType(path_, key, *v, "array of string");
  return v->strings;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key, "array of float"));
  if (v->type != GgufType::kArray || v->elem_type == GgufType::kString ||
      v->elem_type == GgufType::kBool)
    return WrongType(path_, key, *v, "array of float");
  const uint64_t es = ScalarSize(v->elem_type);
  std::vector<float> out(v->count);
  for (uint64_t k = 0; k < v->count; ++k) {
    GgufValue e;
    DecodeScalar(v->elem_type, v->array_data + k * es, &e);
    if (v->elem_type == GgufType::kFloat32 || v->elem_type == GgufType::kFloat64)
      out[k] = static_cast<float>(e.f);
    else
      out[k] = IsSignedType(v->elem_type) ? static_cast<float>(e.i) : static_cast<float>(e.u);
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const GgufValue* v, Lookup(key, "array of integer"));
  if (v->type != GgufType::kArray ||
      !(IsIntegerType(v->elem_type) || v->elem_type == GgufType::kBool))
    return WrongType(path_, key, *v, "array of integer");
  const uint64_t es = ScalarSize(v->elem_type);
  std::vector<int64_t> out(v->count);
  for (uint64_t k = 0; k < v->count; ++k) {
    GgufValue e;
    DecodeScalar(v->elem_type, v->array_data + k * es, &e);
    if (v->elem_type == GgufType::kUint64 && e.u > static_cast<uint64_t>(INT64_MAX))
      return absl::InvalidArgumentError(absl::StrCat(path_, ": metadata key '", std::string(key),
                                                     "' element ", k, " value ", e.u,
                                                     " does not fit in int64"));
    out[k] = e.i;
  }
  return out;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<const GgufTensorInfo*> GgufFile::GetTensor(std::string_view name) const {
  const GgufTensorInfo* t = FindTensor(name);
  if (t == nullptr)
    return absl::NotFoundError(absl::StrCat(path_, ": tensor '", std::string(name), "' not found"));
  return t;
}

absl::StatusOr<DType> GgufFile::TensorDType(const GgufTensorInfo& t) const {
  switch (t.ggml_type) {
    case kGgmlTypeF32:
      return DType::kF32;
    case kGgmlTypeF16:
      return DType::kF16;
    case kGgmlTypeBF16:
      return DType::kBF16;
    default:
      break;
  }
  const char* name = GgmlTypeName(t.ggml_type);
  return absl::UnimplementedError(absl::StrCat(path_, ": tensor '", t.name, "' has ggml type ",
                                               name ? name : "unknown", " (", t.ggml_type,
                                               "); only F32, F16 and BF16 tensors are supported"));
}

}  // namespace eora
