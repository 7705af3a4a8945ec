// Checkpoint files mapped into memory, and tensors that are byte ranges of such a mapping.
//
// The weights are used in place: a file is mapped once, read-only and shared (PROT_READ,
// MAP_SHARED), so its pages are the page cache's own (no copy, no private memory, shared by
// every process that maps the same file, evictable under memory pressure and read again on
// the next touch). A MappedTensor is a (mapping, offset, shape, dtype) handle; the primitives
// that read one hold its shared_ptr, so the mapping outlives every array computed from it.
//
// Why not MLX arrays over the mapped bytes: MLX's CPU allocator keeps each buffer's size in
// the 8 bytes before it, and `buffer_size()` (read by mx.contiguous, copies and views) would
// read 8 bytes of the file instead; docs/speed.md has the full argument.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "mlx/array.h"

namespace openharmony {

namespace mx = mlx::core;

class Mapping {
 public:
  // Maps the whole file `path` read-only and shared; throws std::runtime_error naming it.
  explicit Mapping(const std::string& path);
  ~Mapping();
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

struct MappedTensor {
  std::shared_ptr<const Mapping> mapping;
  size_t offset = 0;  // of the tensor's first byte in the file
  mx::Shape shape;
  mx::Dtype dtype = mx::uint8;

  // Checks that the tensor lies inside the mapping (throws std::invalid_argument otherwise).
  MappedTensor(std::shared_ptr<const Mapping> mapping, size_t offset, mx::Shape shape,
               mx::Dtype dtype);

  const uint8_t* data() const { return mapping->data() + offset; }
  size_t size() const;  // elements
  size_t nbytes() const { return size() * dtype.size(); }
  // Rows [start, stop) of the leading axis: a contiguous byte range of this one.
  MappedTensor rows(int64_t start, int64_t stop) const;
  // The same bytes as an MLX array in MLX's own memory (a copy: for tests and for paths
  // that need an mx.array, never for the model's forward pass).
  mx::array copy() const;
  // Whether both name the same bytes (the primitives' is_equivalent).
  bool same_bytes(const MappedTensor& other) const;
};

}  // namespace openharmony
