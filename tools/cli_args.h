// A small command-line parser for `eora` subcommands: declared flags with help
// text, --help generated from the declarations, clear errors for unknown flags,
// missing values and malformed numbers.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace eora::cli {

class Args {
 public:
  Args(std::string command, std::string summary) : command_(std::move(command)), summary_(std::move(summary)) {}

  // Declares a flag taking a value (`metavar` names it in --help). An empty
  // default means "not set".
  void Flag(const std::string& name, const std::string& metavar, const std::string& def,
            const std::string& help);
  // Declares a boolean switch (no value).
  void Switch(const std::string& name, const std::string& help);

  // Parses argv[first..]. Returns false and fills *error on failure; sets
  // help_requested() on --help/-h.
  bool Parse(int argc, char** argv, int first, std::string* error);
  bool help_requested() const { return help_; }
  std::string Help() const;

  bool Has(const std::string& name) const;  // given on the command line (or switch set)
  std::string Str(const std::string& name) const;
  // Typed getters: false + *error on malformed values.
  bool Int(const std::string& name, int64_t* out, std::string* error) const;
  bool Float(const std::string& name, double* out, std::string* error) const;

 private:
  struct Spec {
    std::string metavar, def, help;
    bool is_switch = false;
  };
  std::string command_, summary_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  std::map<std::string, std::string> values_;
  bool help_ = false;
};

}  // namespace eora::cli
