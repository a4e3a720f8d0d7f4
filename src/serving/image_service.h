#pragma once
// The image job queue of one text-to-image endpoint: a worker thread runs jobs one at a time
// (a denoising loop already uses every core), each job making n images with seeds seed,
// seed+1, ... Progress is visible while a job runs; a cancelled job stops at the next step.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "models/diffusion/pipeline.h"

namespace tessera {

struct GeneratedImage {
  std::vector<uint8_t> png;  // with the generation settings as PNG text chunks
  uint64_t seed = 0;
  int64_t width = 0, height = 0;
};

class ImageJob {
 public:
  ImageJob(diffusion::ImageRequest request, int n) : request_(std::move(request)), n_(n) {}

  // Waits until the job has finished (or failed, or was cancelled); false on timeout.
  bool wait(std::chrono::milliseconds timeout) const;
  bool done() const;
  void cancel() { cancel_.store(true); }
  bool cancelled() const { return cancel_.load(); }
  std::string error() const;                  // empty when it succeeded
  std::vector<GeneratedImage> images() const;  // when done
  // Denoising steps done so far over all images of the job, and their total.
  std::pair<int64_t, int64_t> progress() const;
  int n() const { return n_; }
  const diffusion::ImageRequest& request() const { return request_; }
  double seconds() const;

 private:
  friend class ImageService;
  diffusion::ImageRequest request_;
  int n_;
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  bool done_ = false;
  std::string error_;
  std::vector<GeneratedImage> images_;
  std::atomic<int64_t> steps_done_{0};
  std::atomic<bool> cancel_{false};
  double seconds_ = 0;
};

class ImageService {
 public:
  ImageService(std::shared_ptr<diffusion::DiffusionPipeline> pipeline, size_t max_queued_images);
  ~ImageService();
  ImageService(const ImageService&) = delete;
  ImageService& operator=(const ImageService&) = delete;

  // Validates and queues a job of n images; throws tessera::Error for a bad request and
  // QueueFull (scheduler.h) when the queue already holds max_queued_images.
  std::shared_ptr<ImageJob> submit(const diffusion::ImageRequest& request, int n);

  const diffusion::DiffusionPipeline& pipeline() const { return *pipeline_; }
  int64_t queued_images() const;
  bool busy() const { return busy_.load(); }

 private:
  void loop();
  void run(ImageJob& job);

  std::shared_ptr<diffusion::DiffusionPipeline> pipeline_;
  size_t max_queued_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<ImageJob>> queue_;
  int64_t queued_images_ = 0;
  std::atomic<bool> busy_{false};
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace tessera
