#include "engine/dir_writer.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace eora {
namespace fs = std::filesystem;
namespace {

absl::Status ErrnoError(const std::string& what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

absl::Status FsyncPath(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return ErrnoError(absl::StrCat(path, ": cannot open to fsync"), errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError(absl::StrCat(path, ": fsync failed"), err);
  return absl::OkStatus();
}

// Writes all of [p, p+n) to fd.
absl::Status WriteAll(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, std::min<size_t>(n, 1 << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(absl::StrCat(path, ": write failed"), errno);
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

bool PlainName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos;
}

}  // namespace

int SafetensorsElementSize(std::string_view d) {
  static const std::pair<const char*, int> kSizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};
  for (const auto& [name, size] : kSizes)
    if (d == name) return size;
  return 0;
}

absl::StatusOr<std::unique_ptr<DirWriter>> DirWriter::Begin(const std::string& dir,
                                                            bool overwrite) {
  static std::atomic<uint64_t> counter{0};
  if (dir.empty()) return absl::InvalidArgumentError("output directory name is empty");
  fs::path p = fs::path(dir);
  if (!p.has_filename()) p = p.parent_path();  // "out/" -> "out"
  std::error_code ec;
  if (fs::exists(p, ec) && !overwrite)
    return absl::AlreadyExistsError(absl::StrCat(dir, ": already exists (pass overwrite to replace it)"));
  if (fs::exists(p, ec) && !fs::is_directory(p, ec))
    return absl::FailedPreconditionError(absl::StrCat(dir, ": exists and is not a directory"));
  auto w = std::unique_ptr<DirWriter>(new DirWriter());
  w->dir_ = p.string();
  w->parent_ = p.has_parent_path() ? p.parent_path().string() : std::string(".");
  if (!fs::is_directory(w->parent_, ec)) {
    fs::create_directories(w->parent_, ec);
    if (ec || !fs::is_directory(w->parent_, ec))
      return absl::NotFoundError(absl::StrCat(dir, ": cannot create parent directory ", w->parent_,
                                              ": ", ec.message()));
  }
  w->tmp_ = (fs::path(w->parent_) /
             absl::StrCat(".", p.filename().string(), ".tmp.", ::getpid(), ".", counter++))
                .string();
  if (::mkdir(w->tmp_.c_str(), 0755) != 0) {
    const int err = errno;
    const std::string t = w->tmp_;
    w->tmp_.clear();
    return ErrnoError(absl::StrCat(dir, ": cannot create temporary directory ", t), err);
  }
  w->overwrite_ = overwrite;
  return w;
}

DirWriter::~DirWriter() {
  if (!committed_ && !tmp_.empty()) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

absl::Status DirWriter::WriteFile(const std::string& name, std::string_view contents) {
  if (!PlainName(name)) return absl::InvalidArgumentError(absl::StrCat("bad file name '", name, "'"));
  const std::string path = (fs::path(tmp_) / name).string();
  const std::string shown = (fs::path(dir_) / name).string();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(absl::StrCat(shown, ": cannot create"), errno);
  absl::Status s = WriteAll(fd, contents.data(), contents.size(), shown);
  if (s.ok() && ::fsync(fd) != 0) s = ErrnoError(absl::StrCat(shown, ": fsync failed"), errno);
  if (::close(fd) != 0 && s.ok()) s = ErrnoError(absl::StrCat(shown, ": close failed"), errno);
  return s;
}

absl::Status DirWriter::WriteSafetensors(const std::string& name,
                                         const std::vector<RawTensor>& tensors,
                                         const std::map<std::string, std::string>& metadata,
                                         const TensorObserver& observe) {
  if (!PlainName(name)) return absl::InvalidArgumentError(absl::StrCat("bad file name '", name, "'"));
  const std::string shown = (fs::path(dir_) / name).string();
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  uint64_t offset = 0;
  for (const RawTensor& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || header.contains(t.name))
      return absl::InvalidArgumentError(
          absl::StrCat(shown, ": tensor name '", t.name, "' is empty, reserved or repeated"));
    const int es = SafetensorsElementSize(t.dtype);
    if (es == 0)
      return absl::InvalidArgumentError(
          absl::StrCat(shown, ": tensor ", t.name, ": unknown dtype ", t.dtype));
    uint64_t count = 1;
    for (int64_t d : t.shape) {
      if (d < 0) return absl::InvalidArgumentError(absl::StrCat(shown, ": tensor ", t.name, ": negative dimension"));
      count *= static_cast<uint64_t>(d);
    }
    if (count * es != t.byte_size || (t.byte_size > 0 && t.data == nullptr && !t.produce))
      return absl::InvalidArgumentError(absl::StrCat(shown, ": tensor ", t.name, ": ", t.byte_size,
                                                     " bytes do not match its shape and dtype ",
                                                     t.dtype));
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.byte_size}}};
    offset += t.byte_size;
  }
  std::string h;
  try {
    h = header.dump();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(shown, ": cannot serialise header: ", e.what()));
  }
  while (h.size() % 8 != 0) h.push_back(' ');
  const std::string path = (fs::path(tmp_) / name).string();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(absl::StrCat(shown, ": cannot create"), errno);
  uint8_t len[8];
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  absl::Status s = WriteAll(fd, len, 8, shown);
  if (s.ok()) s = WriteAll(fd, h.data(), h.size(), shown);
  for (const RawTensor& t : tensors) {
    if (!s.ok()) break;
    const void* data = t.data != nullptr || t.byte_size == 0 || !t.produce ? t.data : t.produce();
    if (data == nullptr && t.byte_size > 0) {
      s = absl::InternalError(absl::StrCat(shown, ": tensor ", t.name, ": no bytes produced"));
      break;
    }
    if (observe) observe(t, data);
    s = WriteAll(fd, data, t.byte_size, shown);
  }
  if (s.ok() && ::fsync(fd) != 0) s = ErrnoError(absl::StrCat(shown, ": fsync failed"), errno);
  if (::close(fd) != 0 && s.ok()) s = ErrnoError(absl::StrCat(shown, ": close failed"), errno);
  return s;
}

absl::Status DirWriter::Commit() {
  if (committed_) return absl::FailedPreconditionError(absl::StrCat(dir_, ": already committed"));
  RETURN_IF_ERROR(FsyncPath(tmp_, /*directory=*/true));
  std::error_code ec;
  const bool exists = fs::exists(dir_, ec);
  if (exists && !overwrite_)
    return absl::AlreadyExistsError(absl::StrCat(dir_, ": already exists"));
  if (!exists) {
    // RENAME_NOREPLACE: a directory created meanwhile is not clobbered.
    if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, dir_.c_str(), RENAME_NOREPLACE) != 0) {
      const int err = errno;
      if (err == EEXIST || err == ENOTEMPTY)
        return absl::AlreadyExistsError(absl::StrCat(dir_, ": already exists"));
      if (err != EINVAL && err != ENOSYS)
        return ErrnoError(absl::StrCat(dir_, ": cannot rename ", tmp_, " into place"), err);
      if (::rename(tmp_.c_str(), dir_.c_str()) != 0)
        return ErrnoError(absl::StrCat(dir_, ": cannot rename ", tmp_, " into place"), errno);
    }
    committed_ = true;
  } else {
    if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, dir_.c_str(), RENAME_EXCHANGE) == 0) {
      committed_ = true;  // tmp_ now holds the old directory
      fs::remove_all(tmp_, ec);
    } else {
      // No atomic exchange on this file system: move the old one aside first.
      const std::string old = tmp_ + ".old";
      if (::rename(dir_.c_str(), old.c_str()) != 0)
        return ErrnoError(absl::StrCat(dir_, ": cannot move the existing directory aside"), errno);
      if (::rename(tmp_.c_str(), dir_.c_str()) != 0) {
        const int err = errno;
        ::rename(old.c_str(), dir_.c_str());
        return ErrnoError(absl::StrCat(dir_, ": cannot rename ", tmp_, " into place"), err);
      }
      committed_ = true;
      fs::remove_all(old, ec);
    }
  }
  return FsyncPath(parent_, /*directory=*/true);
}

absl::StatusOr<uint64_t> DirectoryBytes(const std::string& dir) {
  std::error_code ec;
  uint64_t total = 0;
  fs::directory_iterator it(dir, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(dir, ": cannot list: ", ec.message()));
  for (const auto& e : it) {
    if (e.is_regular_file(ec)) total += e.file_size(ec);
  }
  return total;
}

}  // namespace eora
