#pragma once
// Paged KV memory: a pool of fixed-size blocks shared by many sequences, and the per-sequence
// cache that maps positions onto them. Blocks whose tokens are known can be published so a
// later sequence starting with the same tokens adopts them instead of recomputing them; such
// blocks stay around (evictable, least recently used first) after their last user is gone.
//
// Block layout: [layer][keys | values][block_tokens][kv_heads * head_dim], so one layer's keys
// for the positions of a block are contiguous rows (attention walks the cache block by block).
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"

namespace tessera {

class KvCache;

// Fixed-size blocks of KV memory shared by many sequences. Thread-safe.
class KvBlockPool {
 public:
  // max_blocks 0: unlimited (grows on demand). Memory is allocated lazily in chunks, never all
  // up front, and block addresses stay stable.
  KvBlockPool(int64_t layers, int64_t kv_heads, int64_t head_dim, DType dtype, int64_t block_tokens = 16,
              int64_t max_blocks = 0);
  ~KvBlockPool();
  KvBlockPool(const KvBlockPool&) = delete;
  KvBlockPool& operator=(const KvBlockPool&) = delete;

  int64_t layers() const { return layers_; }
  int64_t kv_heads() const { return kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t row_size() const { return kv_heads_ * head_dim_; }
  DType dtype() const { return dtype_; }
  int64_t block_tokens() const { return block_tokens_; }
  int64_t max_blocks() const { return max_blocks_; }  // 0 = unlimited
  int64_t used_blocks() const;    // referenced by at least one live KvCache
  int64_t cached_blocks() const;  // unreferenced but kept for prefix reuse (evictable)
  // At most this many cached blocks (0: as many as the pool holds); beyond it the oldest are
  // freed for reuse, so the memory a pool touches stops growing at the live sequences' peak
  // plus the limit instead of filling the whole pool with finished conversations.
  void set_cache_limit(int64_t blocks);
  // Blocks that can still be handed out: max - used (cached ones are evicted on demand);
  // INT64_MAX for an unlimited pool.
  int64_t free_blocks() const;
  size_t bytes_per_block() const { return bytes_per_block_; }
  size_t allocated_bytes() const;

 private:
  friend class KvCache;

  struct Block {
    std::byte* data = nullptr;
    int32_t refs = 0;
    bool published = false;
    uint64_t key = 0;            // chained hash of all tokens up to and including this block's
    uint64_t serial = 0;         // unique per publication, never reused
    uint64_t parent_serial = 0;  // serial of the published block before it (0 for the first)
    std::vector<int32_t> tokens;
    std::list<int32_t>::iterator lru;  // valid while cached (published, refs == 0)
  };

  // Hands out n private blocks (refs 1), or none and false when there is no room.
  bool acquire(int64_t n, std::vector<int32_t>& ids);
  void release(std::span<const int32_t> ids);
  bool is_private(int32_t id) const;
  // Adopts (refs + 1) the longest chain of published blocks matching the leading full blocks
  // of `tokens`, at most max_blocks of them.
  void adopt_prefix(std::span<const int32_t> tokens, int64_t max_blocks, std::vector<int32_t>& ids);
  // Publishes the blocks of a cache that hold `tokens` (full blocks only).
  void publish_chain(std::span<const int32_t> ids, std::span<const int32_t> tokens);
  std::byte* data(int32_t id) const;

  void grow_locked(int64_t at_least);
  int32_t take_locked();
  void evict_locked(int32_t id);
  int64_t available_locked() const;

  const int64_t layers_, kv_heads_, head_dim_;
  const DType dtype_;
  const int64_t block_tokens_, max_blocks_;
  const size_t bytes_per_block_;

  mutable std::mutex mutex_;
  std::vector<Block> blocks_;
  std::vector<std::unique_ptr<std::byte[]>> chunks_;
  std::vector<int32_t> free_;     // never published or no longer published, refs == 0
  std::list<int32_t> lru_;        // cached blocks, least recently released first
  std::unordered_multimap<uint64_t, int32_t> index_;  // key -> published block
  int64_t used_ = 0;
  int64_t cache_limit_ = 0;  // 0: no limit
  uint64_t next_serial_ = 1;
};

// Keys and values of every layer for one sequence, f32 or f16, [position][kv_head][head_dim],
// stored in blocks of a KvBlockPool. Move-only; not thread-safe (one owner at a time).
class KvCache {
 public:
  KvCache() = default;  // empty, max_length() == 0
  KvCache(std::shared_ptr<KvBlockPool> pool, int64_t max_len);
  // A cache with its own unlimited pool.
  KvCache(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t max_len, DType dtype = DType::F32);
  ~KvCache();
  KvCache(KvCache&& other) noexcept;
  KvCache& operator=(KvCache&& other) noexcept;
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int64_t length() const { return length_; }
  int64_t capacity() const;  // positions the held blocks cover (at most max_length())
  int64_t max_length() const { return max_len_; }
  int64_t row_size() const { return row_size_; }
  int64_t layers() const { return pool_ ? pool_->layers() : 0; }
  int64_t block_tokens() const { return block_tokens_; }
  DType dtype() const { return dtype_; }
  const std::shared_ptr<KvBlockPool>& pool() const { return pool_; }

  // Ensures blocks for positions [0, tokens) (capped at max_length()), and that the block the
  // next position falls in is this cache's own (copy-on-write of a shared block kept by
  // truncate). False, with nothing changed, when the pool has no room.
  bool try_reserve(int64_t tokens);
  void reserve(int64_t tokens);  // the same; throws tessera::Error when the pool is full
  // Releases held blocks beyond what positions [0, max(length(), tokens)) need (undoes a
  // reservation that was not used).
  void release_beyond(int64_t tokens);
  void clear();                  // releases all blocks
  // Drops positions >= tokens and the blocks past them. A kept partial block that is shared
  // gets a private copy before the next write into it.
  void truncate(int64_t tokens);
  size_t bytes() const;          // bytes of the blocks held
  int64_t blocks() const { return static_cast<int64_t>(ids_.size()); }

  // Stores one position's keys and values (row_size() floats each), converting to dtype().
  // The position must be reserved and not in a shared block.
  void store(int64_t layer, int64_t pos, const float* keys, const float* values);
  // Raw rows of position `pos`: f32 or f16 (uint16_t) according to dtype(). Rows stay
  // contiguous (stride row_size()) up to the end of pos's block.
  const void* keys(int64_t layer, int64_t pos) const { return row(layer, pos, 0); }
  const void* values(int64_t layer, int64_t pos) const { return row(layer, pos, 1); }
  // Positions from pos on that are contiguous: to the end of its block, capped at length().
  int64_t contiguous_from(int64_t pos) const;
  // Called by the model after it has written positions [length, length + n).
  void advance(int64_t n) { length_ += n; }

  // Prefix reuse: adopts published blocks whose tokens equal the leading full blocks of
  // `tokens` (exact comparison, chained from position 0), reusing at most tokens.size() - 1
  // positions so that at least one token still runs. Only for an empty cache. Returns the
  // positions reused (a multiple of block_tokens()).
  int64_t reuse_prefix(std::span<const int32_t> tokens);
  // Makes this cache's full blocks findable by reuse_prefix; `tokens` are the tokens at
  // positions [0, length()) (or a leading part of them: the full blocks they cover are
  // published). Published blocks are immutable from then on.
  void publish(std::span<const int32_t> tokens);

 private:
  const void* row(int64_t layer, int64_t pos, int kv) const {
    const int64_t block = pos / block_tokens_, in_block = pos - block * block_tokens_;
    return data_[block] + ((layer * 2 + kv) * block_tokens_ + in_block) * row_bytes_;
  }
  void release_from(size_t block);
  bool needs_copy() const;

  std::shared_ptr<KvBlockPool> pool_;
  std::vector<int32_t> ids_;
  std::vector<std::byte*> data_;
  int64_t length_ = 0, max_len_ = 0;
  // Leading blocks that may be seen by other caches (adopted or published): never written.
  int64_t shared_blocks_ = 0;
  int64_t block_tokens_ = 1, row_size_ = 0, row_bytes_ = 0;
  DType dtype_ = DType::F32;
};

}  // namespace tessera
