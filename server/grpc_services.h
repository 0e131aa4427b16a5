// Thin gRPC services: convert protobuf <-> domain types and call ServingCore /
// AdapterRegistry. No scheduling or model logic lives here.
//
// Threading contract: the services are called concurrently by gRPC's sync
// server threads; they hold no state of their own besides pointers.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "daemon/daemon.h"
#include "eora/v1/adapter.grpc.pb.h"
#include "eora/v1/inference.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server/metrics.h"
#include "server/serving_core.h"

namespace eora::server {

using daemon::GrpcCodeName;  // shared with eora-compressor (daemon/daemon.h)
using daemon::ToGrpcStatus;

class InferenceServiceImpl final : public eora::v1::InferenceService::Service {
 public:
  // Not owned; must outlive the service. `metrics` may be null.
  InferenceServiceImpl(ServingCore* core, ServerMetrics* metrics) : core_(core), metrics_(metrics) {}

  grpc::Status Generate(grpc::ServerContext* ctx, const eora::v1::GenerateRequest* req,
                        eora::v1::GenerateResponse* resp) override;
  grpc::Status GenerateStream(grpc::ServerContext* ctx, const eora::v1::GenerateRequest* req,
                              grpc::ServerWriter<eora::v1::GenerateResponse>* writer) override;
  grpc::Status Tokenize(grpc::ServerContext* ctx, const eora::v1::TokenizeRequest* req,
                        eora::v1::TokenizeResponse* resp) override;
  grpc::Status ModelInfo(grpc::ServerContext* ctx, const eora::v1::ModelInfoRequest* req,
                         eora::v1::ModelInfoResponse* resp) override;

 private:
  grpc::Status Done(const char* method, grpc::Status s);
  ServingCore* core_;
  ServerMetrics* metrics_;
};

class AdapterServiceImpl final : public eora::v1::AdapterService::Service {
 public:
  AdapterServiceImpl(AdapterRegistry* registry, ServerMetrics* metrics)
      : registry_(registry), metrics_(metrics) {}

  grpc::Status LoadAdapter(grpc::ServerContext* ctx, const eora::v1::LoadAdapterRequest* req,
                           eora::v1::LoadAdapterResponse* resp) override;
  grpc::Status UnloadAdapter(grpc::ServerContext* ctx, const eora::v1::UnloadAdapterRequest* req,
                             eora::v1::UnloadAdapterResponse* resp) override;
  grpc::Status ListAdapters(grpc::ServerContext* ctx, const eora::v1::ListAdaptersRequest* req,
                            eora::v1::ListAdaptersResponse* resp) override;
  grpc::Status GetAdapter(grpc::ServerContext* ctx, const eora::v1::GetAdapterRequest* req,
                          eora::v1::AdapterInfo* resp) override;

 private:
  grpc::Status Done(const char* method, grpc::Status s);
  AdapterRegistry* registry_;
  ServerMetrics* metrics_;
};

}  // namespace eora::server
