// Thin gRPC CompressionService: protobuf <-> domain types, calls CompressorCore.
// No job logic lives here.
//
// Threading contract: called concurrently by gRPC's sync server threads; holds
// no state besides pointers.
#pragma once

#include "compressor/service/compressor_core.h"
#include "compressor/service/metrics.h"
#include "eora/v1/compression.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace eora::compress::service {

// Domain <-> protobuf (also used by tests and the CLI's printing).
void JobToProto(const JobRecord& r, eora::v1::Job* out);
JobSpec SpecFromProto(const eora::v1::CreateAdapterJobRequest& r);

class CompressionServiceImpl final : public eora::v1::CompressionService::Service {
 public:
  // Not owned; `metrics` may be null.
  CompressionServiceImpl(CompressorCore* core, CompressorMetrics* metrics)
      : core_(core), metrics_(metrics) {}

  grpc::Status UploadCalibrationSet(grpc::ServerContext* ctx,
                                    grpc::ServerReader<eora::v1::UploadCalibrationChunk>* reader,
                                    eora::v1::CalibrationSetInfo* resp) override;
  grpc::Status ListCalibrationSets(grpc::ServerContext* ctx,
                                   const eora::v1::ListCalibrationSetsRequest* req,
                                   eora::v1::ListCalibrationSetsResponse* resp) override;
  grpc::Status DeleteCalibrationSet(grpc::ServerContext* ctx,
                                    const eora::v1::DeleteCalibrationSetRequest* req,
                                    eora::v1::DeleteCalibrationSetResponse* resp) override;
  grpc::Status CreateAdapterJob(grpc::ServerContext* ctx,
                                const eora::v1::CreateAdapterJobRequest* req,
                                eora::v1::Job* resp) override;
  grpc::Status GetJob(grpc::ServerContext* ctx, const eora::v1::GetJobRequest* req,
                      eora::v1::Job* resp) override;
  grpc::Status ListJobs(grpc::ServerContext* ctx, const eora::v1::ListJobsRequest* req,
                        eora::v1::ListJobsResponse* resp) override;
  grpc::Status CancelJob(grpc::ServerContext* ctx, const eora::v1::CancelJobRequest* req,
                         eora::v1::Job* resp) override;
  grpc::Status WatchJob(grpc::ServerContext* ctx, const eora::v1::WatchJobRequest* req,
                        grpc::ServerWriter<eora::v1::Job>* writer) override;

 private:
  grpc::Status Done(const char* method, const grpc::Status& s);
  CompressorCore* core_;
  CompressorMetrics* metrics_;
};

}  // namespace eora::compress::service
