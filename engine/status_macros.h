// Helpers for propagating absl::Status / absl::StatusOr across function boundaries.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define EORA_CONCAT_INNER(a, b) a##b
#define EORA_CONCAT(a, b) EORA_CONCAT_INNER(a, b)

// Returns from the current function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                   \
  do {                                          \
    ::absl::Status _eora_status = (expr);       \
    if (!_eora_status.ok()) return _eora_status; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): evaluates `expr` (an absl::StatusOr<T>); on error
// returns its status, otherwise moves the value into `lhs` (which may be a declaration).
#define ASSIGN_OR_RETURN(lhs, expr) \
  EORA_ASSIGN_OR_RETURN_IMPL(EORA_CONCAT(_eora_statusor_, __LINE__), lhs, expr)
#define EORA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
