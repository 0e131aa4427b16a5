#include "compressor/service/publisher.h"

#include "absl/strings/str_cat.h"
#include "eora/v1/adapter.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace eora::compress::service {

absl::Status PublishToServer(const std::string& target, const std::string& adapter_id,
                             absl::Duration timeout) {
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = eora::v1::AdapterService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(timeout));
  eora::v1::LoadAdapterRequest req;
  req.set_adapter_id(adapter_id);
  req.set_replace(true);
  eora::v1::LoadAdapterResponse resp;
  grpc::Status s = stub->LoadAdapter(&ctx, req, &resp);
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace eora::compress::service
