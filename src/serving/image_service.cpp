#include "serving/image_service.h"

#include <chrono>

#include "core/error.h"
#include "formats/png.h"
#include "serving/scheduler.h"

namespace tessera {

namespace {
// Thrown from the progress callback to leave a cancelled denoising loop early.
struct JobCancelled {};
}  // namespace

bool ImageJob::wait(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  return cv_.wait_for(lock, timeout, [&] { return done_; });
}

bool ImageJob::done() const {
  std::lock_guard lock(mutex_);
  return done_;
}

std::string ImageJob::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

std::vector<GeneratedImage> ImageJob::images() const {
  std::lock_guard lock(mutex_);
  return images_;
}

double ImageJob::seconds() const {
  std::lock_guard lock(mutex_);
  return seconds_;
}

std::pair<int64_t, int64_t> ImageJob::progress() const { return {steps_done_.load(), request_.steps * n_}; }

ImageService::ImageService(std::shared_ptr<diffusion::DiffusionPipeline> pipeline, size_t max_queued_images)
    : pipeline_(std::move(pipeline)), max_queued_(max_queued_images) {
  thread_ = std::thread([this] { loop(); });
}

ImageService::~ImageService() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
    for (auto& job : queue_) job->cancel();
  }
  wake_.notify_all();
  thread_.join();
}

std::shared_ptr<ImageJob> ImageService::submit(const diffusion::ImageRequest& request, int n) {
  if (n < 1) fail("n must be at least 1, got {}", n);
  pipeline_->validate(request);
  auto job = std::make_shared<ImageJob>(request, n);
  {
    std::lock_guard lock(mutex_);
    if (queued_images_ + n > static_cast<int64_t>(max_queued_)) throw QueueFull();
    queued_images_ += n;
    queue_.push_back(job);
  }
  wake_.notify_all();
  return job;
}

int64_t ImageService::queued_images() const {
  std::lock_guard lock(mutex_);
  return queued_images_;
}

void ImageService::loop() {
  for (;;) {
    std::shared_ptr<ImageJob> job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping
      job = queue_.front();
      queue_.pop_front();
      busy_ = true;
    }
    run(*job);
    std::lock_guard lock(mutex_);
    queued_images_ -= job->n_;
    busy_ = false;
  }
}

void ImageService::run(ImageJob& job) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<GeneratedImage> images;
  std::string error;
  try {
    for (int i = 0; i < job.n_; ++i) {
      if (job.cancelled()) throw JobCancelled{};
      diffusion::ImageRequest request = job.request_;
      request.seed = job.request_.seed + static_cast<uint64_t>(i);
      const auto result = pipeline_->generate(request, [&](int64_t, int64_t) {
        job.steps_done_.fetch_add(1);
        if (job.cancelled()) throw JobCancelled{};
      });
      images.push_back({encode_png(diffusion::image_png(request, result)), request.seed, result.width, result.height});
    }
  } catch (const JobCancelled&) {
    error = "cancelled";
  } catch (const std::exception& e) {
    error = e.what();
  }
  std::lock_guard lock(job.mutex_);
  job.images_ = std::move(images);
  job.error_ = std::move(error);
  job.seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  job.done_ = true;
  job.cv_.notify_all();
}

}  // namespace tessera
