#include "core/tensor.h"

#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"

namespace tessera {

std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {
Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

int64_t normalize_dim(int64_t dim, int64_t ndim) {
  if (dim < 0) dim += ndim;
  if (dim < 0 || dim >= ndim) fail("dimension {} out of range for a {}-d tensor", dim, ndim);
  return dim;
}
}  // namespace

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, DType dtype, Shape shape)
    : Tensor(std::move(storage), byte_offset, dtype, shape, contiguous_strides(shape)) {}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t byte_offset, DType dtype, Shape shape, Shape strides)
    : storage_(std::move(storage)), offset_(byte_offset), dtype_(dtype), shape_(std::move(shape)),
      strides_(std::move(strides)) {}

Tensor Tensor::empty(Shape shape, DType dtype) {
  for (int64_t d : shape)
    if (d < 0) fail("negative dimension in shape {}", shape_str(shape));
  size_t bytes = dtype_bytes(dtype, static_cast<size_t>(shape_numel(shape)));
  return Tensor(Storage::allocate(bytes), 0, dtype, std::move(shape));
}

Tensor Tensor::from_vector(const std::vector<float>& values, Shape shape) {
  if (shape_numel(shape) != static_cast<int64_t>(values.size()))
    fail("from_vector: {} values do not fill shape {}", values.size(), shape_str(shape));
  Tensor out = empty(std::move(shape), DType::F32);
  std::memcpy(out.raw(), values.data(), values.size() * sizeof(float));
  return out;
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

Tensor Tensor::view(Shape shape) const {
  if (!is_contiguous()) fail("view of a non-contiguous tensor {}", shape_str(shape_));
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) fail("view: more than one -1 in {}", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) shape[infer] = known == 0 ? 0 : numel() / known;
  if (shape_numel(shape) != numel()) fail("view: cannot view {} as {}", shape_str(shape_), shape_str(shape));
  return Tensor(storage_, offset_, dtype_, std::move(shape));
}

Tensor Tensor::slice(int64_t dim, int64_t start, int64_t end) const {
  dim = normalize_dim(dim, ndim());
  if (start < 0 || end < start || end > shape_[dim])
    fail("slice [{}, {}) out of range for dim {} of {}", start, end, dim, shape_str(shape_));
  Shape shape = shape_;
  shape[dim] = end - start;
  size_t offset = offset_ + dtype_bytes(dtype_, static_cast<size_t>(start * strides_[dim]));
  return Tensor(storage_, offset, dtype_, std::move(shape), strides_);
}

Tensor Tensor::select(int64_t dim, int64_t index) const {
  dim = normalize_dim(dim, ndim());
  if (index < 0 || index >= shape_[dim]) fail("index {} out of range for dim {} of {}", index, dim, shape_str(shape_));
  Shape shape = shape_, strides = strides_;
  size_t offset = offset_ + dtype_bytes(dtype_, static_cast<size_t>(index * strides_[dim]));
  shape.erase(shape.begin() + dim);
  strides.erase(strides.begin() + dim);
  return Tensor(storage_, offset, dtype_, std::move(shape), std::move(strides));
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  a = normalize_dim(a, ndim());
  b = normalize_dim(b, ndim());
  Shape shape = shape_, strides = strides_;
  std::swap(shape[a], shape[b]);
  std::swap(strides[a], strides[b]);
  return Tensor(storage_, offset_, dtype_, std::move(shape), std::move(strides));
}

namespace {
// Copies a strided tensor into contiguous memory, element by element (innermost run memcpy'd
// when it is unit-strided).
void copy_strided(const Tensor& src, std::byte* dst) {
  if (dtype_is_quantized(src.dtype())) fail("cannot copy a strided view of a {} tensor", dtype_name(src.dtype()));
  const size_t elem = dtype_size(src.dtype());
  const int64_t nd = src.ndim();
  if (src.numel() == 0) return;
  if (nd == 0) {
    std::memcpy(dst, src.raw(), elem);
    return;
  }
  const auto* base = static_cast<const std::byte*>(src.raw());
  const int64_t inner = src.shape()[nd - 1];
  const int64_t inner_stride = src.strides()[nd - 1];
  std::vector<int64_t> index(nd, 0);
  int64_t outer = src.numel() / inner;
  for (int64_t o = 0; o < outer; ++o) {
    int64_t offset = 0;
    for (int64_t d = 0; d < nd - 1; ++d) offset += index[d] * src.strides()[d];
    const std::byte* row = base + offset * static_cast<int64_t>(elem);
    if (inner_stride == 1) {
      std::memcpy(dst, row, inner * elem);
      dst += inner * elem;
    } else {
      for (int64_t i = 0; i < inner; ++i, dst += elem) std::memcpy(dst, row + i * inner_stride * static_cast<int64_t>(elem), elem);
    }
    for (int64_t d = nd - 2; d >= 0; --d) {
      if (++index[d] < src.shape()[d]) break;
      index[d] = 0;
    }
  }
}
}  // namespace

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_);
  copy_strided(*this, static_cast<std::byte*>(out.raw()));
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape_, dtype);
  if (dtype == DType::F32) {
    convert_to_f32(dtype_, src.raw(), out.data<float>(), static_cast<size_t>(numel()));
  } else if (dtype_ == DType::F32) {
    convert_from_f32(dtype, src.data<float>(), out.raw(), static_cast<size_t>(numel()));
  } else {
    std::vector<float> tmp(static_cast<size_t>(numel()));
    convert_to_f32(dtype_, src.raw(), tmp.data(), tmp.size());
    convert_from_f32(dtype, tmp.data(), out.raw(), tmp.size());
  }
  return out;
}

std::vector<float> Tensor::to_vector() const {
  Tensor src = contiguous();
  std::vector<float> out(static_cast<size_t>(numel()));
  convert_to_f32(dtype_, src.raw(), out.data(), out.size());
  return out;
}

}  // namespace tessera
