// Publishing a finished adapter to the serving daemons: AdapterService.LoadAdapter
// (adapter_id, replace) on an eora-server, which reads it from the shared store.
//
// Threading contract: reentrant.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace eora::compress::service {

// Calls LoadAdapter(adapter_id, replace = true) on `target` (HOST:PORT) within
// `timeout`; the server's status (UNAVAILABLE when it is down) on failure.
absl::Status PublishToServer(const std::string& target, const std::string& adapter_id,
                             absl::Duration timeout);

}  // namespace eora::compress::service
