#include "models/llm/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace tessera {

namespace {

uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// A block's key covers every token before it through the parent's key, so equal keys mean
// (barring collisions, which the stored tokens and parent serial rule out) equal prefixes.
uint64_t chain_key(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = mix(parent + 0x9e3779b97f4a7c15ULL);
  for (int32_t t : tokens) h = mix(h ^ static_cast<uint32_t>(t));
  return h;
}

int64_t blocks_for(int64_t tokens, int64_t block_tokens) { return (tokens + block_tokens - 1) / block_tokens; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// KvBlockPool

KvBlockPool::KvBlockPool(int64_t layers, int64_t kv_heads, int64_t head_dim, DType dtype, int64_t block_tokens,
                         int64_t max_blocks)
    : layers_(layers),
      kv_heads_(kv_heads),
      head_dim_(head_dim),
      dtype_(dtype),
      block_tokens_(block_tokens),
      max_blocks_(max_blocks),
      bytes_per_block_(static_cast<size_t>(std::max<int64_t>(layers, 0) * 2 * std::max<int64_t>(block_tokens, 0) *
                                           std::max<int64_t>(kv_heads, 0) * std::max<int64_t>(head_dim, 0)) *
                       (dtype == DType::F16 ? 2 : 4)) {
  if (dtype != DType::F32 && dtype != DType::F16) fail("KV cache type must be f32 or f16");
  if (layers <= 0 || kv_heads <= 0 || head_dim <= 0)
    fail("KV cache: layers, kv_heads and head_dim must be positive (got {}, {}, {})", layers, kv_heads, head_dim);
  if (block_tokens <= 0 || block_tokens > 65536) fail("KV cache: block_tokens must be in 1..65536 (got {})", block_tokens);
  if (max_blocks < 0 || max_blocks > std::numeric_limits<int32_t>::max())
    fail("KV cache: max_blocks must be 0 (unlimited) or a positive block count (got {})", max_blocks);
}

KvBlockPool::~KvBlockPool() = default;

int64_t KvBlockPool::used_blocks() const {
  std::lock_guard lock(mutex_);
  return used_;
}

int64_t KvBlockPool::cached_blocks() const {
  std::lock_guard lock(mutex_);
  return static_cast<int64_t>(lru_.size());
}

int64_t KvBlockPool::free_blocks() const {
  if (max_blocks_ == 0) return std::numeric_limits<int64_t>::max();
  std::lock_guard lock(mutex_);
  return max_blocks_ - used_;
}

size_t KvBlockPool::allocated_bytes() const {
  std::lock_guard lock(mutex_);
  return blocks_.size() * bytes_per_block_;
}

int64_t KvBlockPool::available_locked() const {
  if (max_blocks_ == 0) return std::numeric_limits<int64_t>::max();
  return max_blocks_ - used_;
}

void KvBlockPool::grow_locked(int64_t at_least) {
  // Chunks grow with the pool (half of what it holds), between about 1 MiB and 256 MiB, so a
  // small sequence stays small and a big pool does not make many tiny allocations.
  const int64_t held = static_cast<int64_t>(blocks_.size());
  const int64_t min_chunk = std::max<int64_t>(1, static_cast<int64_t>((1u << 20) / bytes_per_block_));
  const int64_t max_chunk = std::max<int64_t>(1, static_cast<int64_t>((256u << 20) / bytes_per_block_));
  int64_t count = std::max(at_least, std::clamp(held / 2, min_chunk, max_chunk));
  if (max_blocks_ > 0) count = std::min(count, max_blocks_ - held);
  if (count <= 0) return;
  chunks_.push_back(std::unique_ptr<std::byte[]>(new std::byte[static_cast<size_t>(count) * bytes_per_block_]));
  std::byte* base = chunks_.back().get();
  blocks_.resize(static_cast<size_t>(held + count));
  for (int64_t i = count - 1; i >= 0; --i) {
    blocks_[held + i].data = base + static_cast<size_t>(i) * bytes_per_block_;
    free_.push_back(static_cast<int32_t>(held + i));
  }
}

void KvBlockPool::evict_locked(int32_t id) {
  Block& b = blocks_[id];
  lru_.erase(b.lru);
  auto [first, last] = index_.equal_range(b.key);
  for (auto it = first; it != last; ++it) {
    if (it->second == id) {
      index_.erase(it);
      break;
    }
  }
  b.published = false;
  b.tokens.clear();
  free_.push_back(id);
}

int32_t KvBlockPool::take_locked() {
  if (free_.empty() && (max_blocks_ == 0 || static_cast<int64_t>(blocks_.size()) < max_blocks_)) grow_locked(1);
  if (free_.empty()) evict_locked(lru_.front());  // available_locked() promised one
  const int32_t id = free_.back();
  free_.pop_back();
  blocks_[id].refs = 1;
  ++used_;
  return id;
}

bool KvBlockPool::acquire(int64_t n, std::vector<int32_t>& ids) {
  std::lock_guard lock(mutex_);
  if (n > available_locked()) return false;
  const int64_t unallocated = max_blocks_ == 0 ? n : max_blocks_ - static_cast<int64_t>(blocks_.size());
  const int64_t missing = n - static_cast<int64_t>(free_.size());
  if (missing > 0 && unallocated > 0) grow_locked(std::min(missing, unallocated));
  for (int64_t i = 0; i < n; ++i) ids.push_back(take_locked());
  return true;
}

void KvBlockPool::release(std::span<const int32_t> ids) {
  std::lock_guard lock(mutex_);
  for (int32_t id : ids) {
    Block& b = blocks_[id];
    if (--b.refs > 0) continue;
    --used_;
    if (b.published) {
      lru_.push_back(id);
      b.lru = std::prev(lru_.end());
    } else {
      free_.push_back(id);
    }
  }
  if (cache_limit_ > 0)
    while (static_cast<int64_t>(lru_.size()) > cache_limit_) evict_locked(lru_.front());
}

void KvBlockPool::set_cache_limit(int64_t blocks) {
  std::lock_guard lock(mutex_);
  cache_limit_ = std::max<int64_t>(0, blocks);
  if (cache_limit_ > 0)
    while (static_cast<int64_t>(lru_.size()) > cache_limit_) evict_locked(lru_.front());
}

bool KvBlockPool::is_private(int32_t id) const {
  std::lock_guard lock(mutex_);
  return blocks_[id].refs == 1 && !blocks_[id].published;
}

std::byte* KvBlockPool::data(int32_t id) const {
  std::lock_guard lock(mutex_);
  return blocks_[id].data;
}

void KvBlockPool::adopt_prefix(std::span<const int32_t> tokens, int64_t max_blocks, std::vector<int32_t>& ids) {
  std::lock_guard lock(mutex_);
  uint64_t key = 0, parent = 0;
  for (int64_t i = 0; i < max_blocks; ++i) {
    const auto block_tokens = tokens.subspan(static_cast<size_t>(i * block_tokens_), static_cast<size_t>(block_tokens_));
    const uint64_t k = chain_key(key, block_tokens);
    int32_t found = -1;
    auto [first, last] = index_.equal_range(k);
    for (auto it = first; it != last && found < 0; ++it) {
      const Block& b = blocks_[it->second];
      if (b.parent_serial == parent && std::equal(b.tokens.begin(), b.tokens.end(), block_tokens.begin(), block_tokens.end()))
        found = it->second;
    }
    if (found < 0) break;
    Block& b = blocks_[found];
    if (b.refs++ == 0) {
      lru_.erase(b.lru);
      ++used_;
    }
    ids.push_back(found);
    key = k;
    parent = b.serial;
  }
}

void KvBlockPool::publish_chain(std::span<const int32_t> ids, std::span<const int32_t> tokens) {
  std::lock_guard lock(mutex_);
  uint64_t key = 0, parent = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto block_tokens = tokens.subspan(i * static_cast<size_t>(block_tokens_), static_cast<size_t>(block_tokens_));
    const uint64_t k = chain_key(key, block_tokens);
    Block& b = blocks_[ids[i]];
    if (b.published) {
      // Adopted or published before: it must be the same chain.
      if (b.key != k || b.parent_serial != parent ||
          !std::equal(b.tokens.begin(), b.tokens.end(), block_tokens.begin(), block_tokens.end()))
        fail("KV cache publish: tokens of block {} differ from the ones it was computed for", i);
    } else {
      int32_t twin = -1;
      auto [first, last] = index_.equal_range(k);
      for (auto it = first; it != last && twin < 0; ++it) {
        const Block& other = blocks_[it->second];
        if (other.parent_serial == parent &&
            std::equal(other.tokens.begin(), other.tokens.end(), block_tokens.begin(), block_tokens.end()))
          twin = it->second;
      }
      if (twin >= 0) {
        // Another sequence already published these tokens; later blocks chain onto that one
        // and this copy stays private.
        key = k;
        parent = blocks_[twin].serial;
        continue;
      }
      b.published = true;
      b.key = k;
      b.serial = next_serial_++;
      b.parent_serial = parent;
      b.tokens.assign(block_tokens.begin(), block_tokens.end());
      index_.emplace(k, ids[i]);
    }
    key = k;
    parent = b.serial;
  }
}

// ---------------------------------------------------------------------------------------------
// KvCache

KvCache::KvCache(std::shared_ptr<KvBlockPool> pool, int64_t max_len) : pool_(std::move(pool)), max_len_(max_len) {
  if (!pool_) fail("KV cache: no block pool given");
  if (max_len < 0) fail("KV cache: max_len must not be negative (got {})", max_len);
  block_tokens_ = pool_->block_tokens();
  row_size_ = pool_->row_size();
  dtype_ = pool_->dtype();
  row_bytes_ = row_size_ * static_cast<int64_t>(dtype_size(dtype_));
}

KvCache::KvCache(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t max_len, DType dtype)
    : KvCache(std::make_shared<KvBlockPool>(layers, kv_heads, head_dim, dtype), max_len) {}

KvCache::~KvCache() { release_from(0); }

KvCache::KvCache(KvCache&& other) noexcept { *this = std::move(other); }

KvCache& KvCache::operator=(KvCache&& other) noexcept {
  if (this == &other) return *this;
  release_from(0);
  pool_ = std::move(other.pool_);
  ids_ = std::move(other.ids_);
  data_ = std::move(other.data_);
  length_ = other.length_;
  max_len_ = other.max_len_;
  shared_blocks_ = other.shared_blocks_;
  block_tokens_ = other.block_tokens_;
  row_size_ = other.row_size_;
  row_bytes_ = other.row_bytes_;
  dtype_ = other.dtype_;
  other.ids_.clear();
  other.data_.clear();
  other.length_ = other.max_len_ = other.shared_blocks_ = 0;
  return *this;
}

int64_t KvCache::capacity() const { return std::min(blocks() * block_tokens_, max_len_); }

size_t KvCache::bytes() const { return pool_ ? ids_.size() * pool_->bytes_per_block() : 0; }

bool KvCache::needs_copy() const {
  return length_ % block_tokens_ != 0 && length_ / block_tokens_ < shared_blocks_;
}

bool KvCache::try_reserve(int64_t tokens) {
  tokens = std::min(tokens, max_len_);
  if (!pool_ || tokens <= 0) return true;
  const int64_t grow = std::max<int64_t>(0, blocks_for(tokens, block_tokens_) - blocks());
  const bool copy = tokens > length_ && needs_copy();
  if (grow == 0 && !copy) return true;
  std::vector<int32_t> fresh;
  if (!pool_->acquire(grow + (copy ? 1 : 0), fresh)) return false;
  size_t next = 0;
  if (copy) {
    // The block holding the next position is shared: write into a private copy of it.
    const size_t k = static_cast<size_t>(length_ / block_tokens_);
    std::byte* dst = pool_->data(fresh[next]);
    std::memcpy(dst, data_[k], pool_->bytes_per_block());
    const int32_t old = ids_[k];
    pool_->release(std::span(&old, 1));
    ids_[k] = fresh[next++];
    data_[k] = dst;
    shared_blocks_ = static_cast<int64_t>(k);
  }
  for (; next < fresh.size(); ++next) {
    ids_.push_back(fresh[next]);
    data_.push_back(pool_->data(fresh[next]));
  }
  return true;
}

void KvCache::reserve(int64_t tokens) {
  if (try_reserve(tokens)) return;
  const int64_t need = blocks_for(std::min(tokens, max_len_), block_tokens_) - blocks() + (needs_copy() ? 1 : 0);
  fail("KV cache is full: {} more blocks of {} tokens needed, {} free in the pool of {}", need, block_tokens_,
       pool_->free_blocks(), pool_->max_blocks());
}

void KvCache::release_from(size_t block) {
  if (block >= ids_.size()) return;
  // Last blocks first, so that cached ones are evicted from the end of a sequence before its
  // (more widely shared) beginning.
  std::vector<int32_t> gone(ids_.rbegin(), ids_.rend() - static_cast<std::ptrdiff_t>(block));
  pool_->release(gone);
  ids_.resize(block);
  data_.resize(block);
  shared_blocks_ = std::min<int64_t>(shared_blocks_, static_cast<int64_t>(block));
}

void KvCache::release_beyond(int64_t tokens) {
  release_from(static_cast<size_t>(blocks_for(std::max(tokens, length_), block_tokens_)));
}

void KvCache::clear() {
  release_from(0);
  length_ = 0;
}

void KvCache::truncate(int64_t tokens) {
  length_ = std::clamp<int64_t>(tokens, 0, length_);
  release_from(static_cast<size_t>(blocks_for(length_, block_tokens_)));
}

void KvCache::store(int64_t layer, int64_t pos, const float* keys, const float* values) {
  if (pos < 0 || pos >= capacity() || layer < 0 || layer >= layers())
    fail("KV cache store: position {} of layer {} is outside the reserved {} positions", pos, layer, capacity());
  if (pos / block_tokens_ < shared_blocks_)
    fail("KV cache store: position {} is in a shared block (reserve before writing)", pos);
  const size_t n = static_cast<size_t>(row_size_);
  convert_from_f32(dtype_, keys, const_cast<void*>(row(layer, pos, 0)), n);
  convert_from_f32(dtype_, values, const_cast<void*>(row(layer, pos, 1)), n);
}

int64_t KvCache::contiguous_from(int64_t pos) const {
  if (pos < 0 || pos >= length_) return 0;
  return std::min(block_tokens_ - pos % block_tokens_, length_ - pos);
}

int64_t KvCache::reuse_prefix(std::span<const int32_t> tokens) {
  if (length_ > 0) fail("KV cache reuse_prefix: the cache already holds {} positions", length_);
  if (!pool_ || tokens.size() < 2) return 0;
  release_from(0);
  const int64_t usable = std::min<int64_t>(static_cast<int64_t>(tokens.size()) - 1, max_len_);
  std::vector<int32_t> adopted;
  pool_->adopt_prefix(tokens, usable / block_tokens_, adopted);
  for (int32_t id : adopted) {
    ids_.push_back(id);
    data_.push_back(pool_->data(id));
  }
  shared_blocks_ = blocks();
  length_ = blocks() * block_tokens_;
  return length_;
}

void KvCache::publish(std::span<const int32_t> tokens) {
  if (static_cast<int64_t>(tokens.size()) > length_)
    fail("KV cache publish: {} tokens given for a cache holding {} positions", tokens.size(), length_);
  if (!pool_) return;
  const int64_t full = static_cast<int64_t>(tokens.size()) / block_tokens_;
  // Frozen first: even a publish that stops part way must leave no published block writable.
  shared_blocks_ = std::max(shared_blocks_, full);
  pool_->publish_chain(std::span(ids_).first(static_cast<size_t>(full)),
                       tokens.first(static_cast<size_t>(full * block_tokens_)));
}

}  // namespace tessera
