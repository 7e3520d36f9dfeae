#pragma once
// The one error type a user can cause (bad shape, impossible mesh, unreadable database, ...).
// The message says what was wrong and what to do; the CLI prints it and exits with code 2.
#include <stdexcept>
#include <string>

namespace cptune {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace cptune
