#pragma once
// The named weights of one pipeline component (unet, vae, a text encoder), whatever file
// layout they came from: a diffusers component folder, or a single-file checkpoint whose keys
// were renamed to diffusers' names. Every weight is checked against the shape the component's
// config implies and handed out as dense f32.
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace tessera {
class SafetensorsFile;
}

namespace tessera::diffusion {

class ComponentWeights {
 public:
  explicit ComponentWeights(std::string origin) : origin_(std::move(origin)) {}

  // diffusion_pytorch_model.safetensors or model.safetensors (or their .fp16 variants, or a
  // sharded *.safetensors.index.json) inside `dir`.
  static ComponentWeights from_folder(const std::filesystem::path& dir);

  const std::string& origin() const { return origin_; }
  void add(const std::string& name, Tensor tensor) { tensors_[name] = std::move(tensor); }
  void keep_alive(std::shared_ptr<const void> owner) { owners_.push_back(std::move(owner)); }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  std::vector<std::string> names() const;

  // The weight as contiguous f32 with exactly `shape`; a missing name, a different shape or a
  // non-float dtype is one error line naming the origin and the weight.
  Tensor get(const std::string& name, const Shape& shape) const;
  // A 1x1 convolution stored as [out, in, 1, 1] or a linear [out, in]: both accepted as [out, in].
  Tensor get_matrix(const std::string& name, int64_t out, int64_t in) const;

 private:
  std::string origin_;
  std::map<std::string, Tensor> tensors_;
  std::vector<std::shared_ptr<const void>> owners_;
};

}  // namespace tessera::diffusion
