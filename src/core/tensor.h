#pragma once
// A typed, strided view over Storage. Shapes are row-major; strides count elements.
// The tensor knows its device; CPU kernels accept CPU tensors only and say so otherwise.
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/storage.h"

namespace tessera {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);  // "[2, 3]"
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, DType dtype, Shape shape);
  Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, DType dtype, Shape shape, Shape strides);

  static Tensor empty(Shape shape, DType dtype = DType::F32);  // zero-filled
  static Tensor zeros(Shape shape, DType dtype = DType::F32) { return empty(std::move(shape), dtype); }
  static Tensor from_vector(const std::vector<float>& values, Shape shape);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::CPU; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t ndim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t dim(int64_t i) const { return shape_.at(i < 0 ? i + ndim() : i); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return dtype_bytes(dtype_, static_cast<size_t>(numel())); }
  bool is_contiguous() const;
  bool is_mapped() const { return storage_ && storage_->is_mapped(); }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t byte_offset() const { return offset_; }

  void* raw() { return storage_->data() + offset_; }
  const void* raw() const { return storage_->data() + offset_; }
  template <typename T>
  T* data() { return reinterpret_cast<T*>(raw()); }
  template <typename T>
  const T* data() const { return reinterpret_cast<const T*>(raw()); }

  // Views share storage.
  Tensor view(Shape shape) const;                             // contiguous only; one dim may be -1
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;  // [start, end)
  Tensor select(int64_t dim, int64_t index) const;             // drops `dim`
  Tensor transpose(int64_t a, int64_t b) const;

  Tensor contiguous() const;   // copy only if needed
  Tensor clone() const;        // always copies, contiguous
  Tensor to(DType dtype) const;  // f32/bf16/f16 conversions; returns *this if already that type
  std::vector<float> to_vector() const;  // any float dtype, any strides

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  DType dtype_ = DType::F32;
  Shape shape_;
  Shape strides_;
};

}  // namespace tessera
