#include "tools/cli_args.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

namespace eora::cli {

void Args::Flag(const std::string& name, const std::string& metavar, const std::string& def,
                const std::string& help) {
  order_.push_back(name);
  specs_[name] = Spec{metavar, def, help, false};
}

void Args::Switch(const std::string& name, const std::string& help) {
  order_.push_back(name);
  specs_[name] = Spec{"", "", help, true};
}

bool Args::Parse(int argc, char** argv, int first, std::string* error) {
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      help_ = true;
      return true;
    }
    if (a.rfind("--", 0) != 0) {
      *error = "unexpected argument '" + a + "' (flags start with --)";
      return false;
    }
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto it = specs_.find(name);
    if (it == specs_.end()) {
      *error = "unknown flag --" + name + " (see " + command_ + " --help)";
      return false;
    }
    if (it->second.is_switch) {
      if (has_value) {
        *error = "--" + name + " takes no value";
        return false;
      }
      values_[name] = "1";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) {
        *error = "--" + name + " needs a value (" + it->second.metavar + ")";
        return false;
      }
      value = argv[++i];
    }
    values_[name] = value;
  }
  return true;
}

std::string Args::Help() const {
  std::ostringstream o;
  o << "usage: " << command_ << " [flags]\n\n" << summary_ << "\n\nflags:\n";
  for (const auto& n : order_) {
    const Spec& s = specs_.at(n);
    std::string left = "  --" + n + (s.is_switch ? "" : " " + s.metavar);
    o << left;
    if (left.size() < 28) o << std::string(28 - left.size(), ' '); else o << "\n" << std::string(28, ' ');
    o << s.help;
    if (!s.def.empty()) o << " (default: " << s.def << ")";
    o << "\n";
  }
  o << "  --help                    show this help\n";
  return o.str();
}

bool Args::Has(const std::string& name) const { return values_.count(name) > 0; }

std::string Args::Str(const std::string& name) const {
  auto it = values_.find(name);
  if (it != values_.end()) return it->second;
  auto s = specs_.find(name);
  return s == specs_.end() ? "" : s->second.def;
}

bool Args::Int(const std::string& name, int64_t* out, std::string* error) const {
  const std::string v = Str(name);
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0) {
    *error = "--" + name + ": expected an integer, got '" + v + "'";
    return false;
  }
  *out = x;
  return true;
}

bool Args::Float(const std::string& name, double* out, std::string* error) const {
  const std::string v = Str(name);
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno != 0 || !std::isfinite(x)) {
    *error = "--" + name + ": expected a number, got '" + v + "'";
    return false;
  }
  *out = x;
  return true;
}

}  // namespace eora::cli
