#include "engine/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

static_assert(std::endian::native == std::endian::little,
              "safetensors reader assumes a little-endian host");

namespace eora {
namespace {

// The reference implementation's limit on the JSON header.
constexpr uint64_t kMaxHeaderSize = 100'000'000;
constexpr uint64_t kMaxIndexSize = 256ull << 20;

// Element size of a safetensors dtype name; 0 if unknown.
int ElementSize(const std::string& d) {
  static const std::pair<const char*, int> kSizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};
  for (const auto& [name, size] : kSizes)
    if (d == name) return size;
  return 0;
}

std::optional<DType> EngineDType(const std::string& d) {
  if (d == "F32") return DType::kF32;
  if (d == "F16") return DType::kF16;
  if (d == "BF16") return DType::kBF16;
  return std::nullopt;
}

std::string ErrnoText(int err) { return std::strerror(err); }

absl::Status ErrnoError(const std::string& what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", ErrnoText(err)));
}

// Writes a file under a temporary name in the destination directory; Commit() fsyncs,
// renames it into place and fsyncs the directory. Destruction without Commit removes it.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)) {}
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
  }

  absl::Status Create() {
    static std::atomic<uint64_t> counter{0};
    const std::filesystem::path p(path_);
    dir_ = p.has_parent_path() ? p.parent_path().string() : std::string(".");
    tmp_ = (std::filesystem::path(dir_) /
            absl::StrCat(".", p.filename().string(), ".tmp.", ::getpid(), ".", counter++))
               .string();
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      const int err = errno;
      tmp_.clear();
      return ErrnoError(absl::StrCat(path_, ": cannot create temporary file in ", dir_), err);
    }
    return absl::OkStatus();
  }

  absl::Status Write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const size_t chunk = std::min<size_t>(n, size_t{1} << 30);
      const ssize_t w = ::write(fd_, p, chunk);
      if (w < 0) {
        if (errno == EINTR) continue;
        return ErrnoError(absl::StrCat(path_, ": write failed"), errno);
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    return absl::OkStatus();
  }

  absl::Status Commit() {
    if (::fsync(fd_) != 0) return ErrnoError(absl::StrCat(path_, ": fsync failed"), errno);
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) return ErrnoError(absl::StrCat(path_, ": close failed"), errno);
    if (::rename(tmp_.c_str(), path_.c_str()) != 0)
      return ErrnoError(absl::StrCat(path_, ": rename from ", tmp_, " failed"), errno);
    committed_ = true;
    const int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return ErrnoError(absl::StrCat(dir_, ": cannot open directory to fsync"), errno);
    const int rc = ::fsync(dfd);
    const int err = errno;
    ::close(dfd);
    if (rc != 0) return ErrnoError(absl::StrCat(dir_, ": directory fsync failed"), err);
    return absl::OkStatus();
  }

 private:
  std::string path_;
  std::string dir_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t max_size) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(path, ": cannot read: ", ec.message()));
  if (size > max_size)
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file is ", size, " bytes, larger than the limit of ", max_size));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat(path, ": read failed"));
  return ss.str();
}

// Shard file names from an index must stay inside the checkpoint directory.
bool SafeRelativeName(const std::string& name) {
  if (name.empty() || name[0] == '/') return false;
  for (const auto& part : std::filesystem::path(name))
    if (part == "..") return false;
  return true;
}

}  // namespace

const char* SafetensorsDTypeName(DType t) { return DTypeName(t); }

std::string SafetensorsTensor::ShapeString() const {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  ASSIGN_OR_RETURN(f->file_, MappedFile::Open(path, 8, "safetensors", "8-byte header length"));
  RETURN_IF_ERROR(f->Parse());
  return f;
}

absl::Status SafetensorsFile::Parse() {
  uint64_t n;
  std::memcpy(&n, file_.data(), 8);
  if (n < 2 || n > kMaxHeaderSize)
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": safetensors header length ", n, " is invalid (must be 2..", kMaxHeaderSize, ")"));
  if (n > file_.size() - 8)
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": truncated safetensors file: header of ", n,
                     " bytes but the file has ", file_.size(), " bytes"));
  const char* hb = reinterpret_cast<const char*>(file_.data() + 8);
  if (hb[0] != '{')
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": safetensors header does not start with '{'"));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hb, hb + n);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": safetensors header is not valid JSON: ", e.what()));
  }
  if (!header.is_object())
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": safetensors header is not a JSON object"));
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = file_.size() - data_start;
  std::vector<uint64_t> begins;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object())
        return absl::InvalidArgumentError(absl::StrCat(path_, ": __metadata__ is not an object"));
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m.value().is_string())
          return absl::InvalidArgumentError(
              absl::StrCat(path_, ": __metadata__ value of '", m.key(), "' is not a string"));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tn = absl::StrCat(path_, ": tensor '", name, "'");
    if (!e.is_object())
      return absl::InvalidArgumentError(absl::StrCat(tn, ": entry is not an object"));
    SafetensorsTensor t;
    t.name = name;
    auto dt = e.find("dtype");
    if (dt == e.end() || !dt->is_string())
      return absl::InvalidArgumentError(absl::StrCat(tn, ": missing or non-string \"dtype\""));
    t.dtype_name = dt->get<std::string>();
    const int es = ElementSize(t.dtype_name);
    if (es == 0)
      return absl::InvalidArgumentError(absl::StrCat(tn, ": unknown dtype '", t.dtype_name, "'"));
    t.dtype = EngineDType(t.dtype_name);
    auto sh = e.find("shape");
    if (sh == e.end() || !sh->is_array())
      return absl::InvalidArgumentError(absl::StrCat(tn, ": missing or non-array \"shape\""));
    uint64_t count = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
        return absl::InvalidArgumentError(
            absl::StrCat(tn, ": shape ", sh->dump(), " has a non-integer or negative dimension"));
      const uint64_t v = d.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (v != 0 && count > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / v))
        return absl::InvalidArgumentError(absl::StrCat(tn, ": shape ", sh->dump(), " overflows"));
      count *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    t.n_elements = count;
    if (count > std::numeric_limits<uint64_t>::max() / es)
      return absl::InvalidArgumentError(absl::StrCat(tn, ": shape ", sh->dump(), " overflows"));
    auto off = e.find("data_offsets");
    if (off == e.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      return absl::InvalidArgumentError(
          absl::StrCat(tn, ": \"data_offsets\" must be an array of two non-negative integers"));
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end || end > data_size)
      return absl::InvalidArgumentError(absl::StrCat(
          tn, ": data_offsets [", begin, ", ", end, "] are outside the data section of ", data_size,
          " bytes (truncated file or bad offsets)"));
    if (end - begin != count * es)
      return absl::InvalidArgumentError(absl::StrCat(
          tn, ": data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes but shape ",
          t.ShapeString(), " of ", t.dtype_name, " needs ", count * es));
    t.data = file_.data() + data_start + begin;
    t.byte_size = end - begin;
    begins.push_back(begin);
    tensors_.push_back(std::move(t));
  }
  // Sort by data offset (file order); names are unique (JSON object keys).
  std::vector<size_t> order(tensors_.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return begins[a] < begins[b]; });
  std::vector<SafetensorsTensor> sorted;
  sorted.reserve(tensors_.size());
  for (size_t k : order) sorted.push_back(std::move(tensors_[k]));
  tensors_ = std::move(sorted);
  for (size_t k = 0; k < tensors_.size(); ++k) index_[tensors_[k].name] = k;
  return absl::OkStatus();
}

const SafetensorsTensor* SafetensorsFile::FindTensor(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<const SafetensorsTensor*> SafetensorsFile::GetTensor(std::string_view name) const {
  const SafetensorsTensor* t = FindTensor(name);
  if (t == nullptr)
    return absl::NotFoundError(absl::StrCat(path_, ": tensor '", std::string(name), "' not found"));
  return t;
}

absl::StatusOr<DType> SafetensorsFile::TensorDType(const SafetensorsTensor& t) const {
  if (t.dtype) return *t.dtype;
  return absl::UnimplementedError(absl::StrCat(path_, ": tensor '", t.name, "' has dtype ",
                                               t.dtype_name,
                                               "; only F32, F16 and BF16 are supported"));
}

// ---- Sharded checkpoints ----------------------------------------------------------

absl::StatusOr<std::map<std::string, std::string>> ReadSafetensorsIndex(
    const std::string& index_path) {
  ASSIGN_OR_RETURN(std::string text, ReadSmallFile(index_path, kMaxIndexSize));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not a JSON object"));
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object())
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": missing or non-object \"weight_map\""));
  std::map<std::string, std::string> out;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string())
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map entry for '", it.key(), "' is not a string"));
    std::string shard = it.value().get<std::string>();
    if (!SafeRelativeName(shard))
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry for '",
                                                     it.key(), "' names shard '", shard,
                                                     "', which is not a relative path inside the "
                                                     "checkpoint directory"));
    out.emplace(it.key(), std::move(shard));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(
    const std::string& dir) {
  auto ck = std::make_unique<SafetensorsCheckpoint>();
  ck->dir_ = dir;
  const std::filesystem::path d(dir);
  const std::string index_path = (d / "model.safetensors.index.json").string();
  const std::string single_path = (d / "model.safetensors").string();
  std::error_code ec;
  if (std::filesystem::exists(index_path, ec)) {
    ck->description_ = index_path;
    ASSIGN_OR_RETURN(auto weight_map, ReadSafetensorsIndex(index_path));
    std::map<std::string, const SafetensorsFile*> shards;
    for (const auto& [name, shard] : weight_map) {
      if (shards.count(shard)) continue;
      ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open((d / shard).string()));
      shards[shard] = f.get();
      ck->files_.push_back(std::move(f));
    }
    for (const auto& [name, shard] : weight_map) {
      const SafetensorsFile* f = shards[shard];
      const SafetensorsTensor* t = f->FindTensor(name);
      if (t == nullptr)
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor '", name,
                                                       "' is mapped to shard ", f->path(),
                                                       ", which does not contain it"));
      ck->entries_[name] = Entry{f, t};
    }
    return ck;
  }
  if (std::filesystem::exists(single_path, ec)) {
    ck->description_ = single_path;
    ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(single_path));
    for (const auto& t : f->tensors()) ck->entries_[t.name] = Entry{f.get(), &t};
    ck->files_.push_back(std::move(f));
    return ck;
  }
  return absl::NotFoundError(absl::StrCat(
      dir, ": no model.safetensors or model.safetensors.index.json in the checkpoint directory"));
}

std::optional<SafetensorsCheckpoint::Entry> SafetensorsCheckpoint::Find(
    std::string_view name) const {
  auto it = entries_.find(std::string(name));
  if (it == entries_.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<SafetensorsCheckpoint::Entry> SafetensorsCheckpoint::Get(
    std::string_view name) const {
  auto e = Find(name);
  if (!e)
    return absl::NotFoundError(
        absl::StrCat(description_, ": tensor '", std::string(name), "' not found"));
  return *e;
}

// ---- Writing ---------------------------------------------------------------------

absl::Status WriteFileAtomic(const std::string& path, std::string_view contents) {
  AtomicFile f(path);
  RETURN_IF_ERROR(f.Create());
  RETURN_IF_ERROR(f.Write(contents.data(), contents.size()));
  return f.Commit();
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<SafetensorsWriteTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second)
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": invalid or duplicate tensor name '", t.name, "'"));
    uint64_t count = 1;
    for (int64_t d : t.shape) {
      if (d < 0)
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor '", t.name, "' has a negative dimension"));
      count *= static_cast<uint64_t>(d);
    }
    if (count * DTypeSize(t.dtype) != t.byte_size || (t.byte_size > 0 && t.data == nullptr))
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", t.name, "' has ", t.byte_size,
                       " bytes of data but shape [", absl::StrJoin(t.shape, ", "), "] of ",
                       DTypeName(t.dtype), " needs ", count * DTypeSize(t.dtype)));
    nlohmann::ordered_json e;
    e["dtype"] = SafetensorsDTypeName(t.dtype);
    e["shape"] = t.shape;
    e["data_offsets"] = {offset, offset + t.byte_size};
    header[t.name] = std::move(e);
    offset += t.byte_size;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  const uint64_t n = h.size();
  AtomicFile f(path);
  RETURN_IF_ERROR(f.Create());
  RETURN_IF_ERROR(f.Write(&n, 8));
  RETURN_IF_ERROR(f.Write(h.data(), h.size()));
  for (const auto& t : tensors) RETURN_IF_ERROR(f.Write(t.data, t.byte_size));
  return f.Commit();
}

absl::Status WriteSafetensorsIndex(const std::string& path,
                                   const std::map<std::string, std::string>& weight_map,
                                   uint64_t total_size) {
  nlohmann::ordered_json j;
  j["metadata"] = {{"total_size", total_size}};
  j["weight_map"] = nlohmann::ordered_json::object();
  for (const auto& [k, v] : weight_map) j["weight_map"][k] = v;
  return WriteFileAtomic(path, j.dump(2) + "\n");
}

}  // namespace eora
