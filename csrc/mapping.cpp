#include "mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace openharmony {

Mapping::Mapping(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    const int error = errno;
    ::close(fd);
    throw std::runtime_error("cannot stat " + path + ": " + std::strerror(error));
  }
  size_ = size_t(info.st_size);
  if (size_ > 0) {
    // PROT_READ: a stray write through the mapping faults instead of changing the file.
    void* data = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    const int error = errno;
    ::close(fd);  // the mapping keeps its own reference to the file
    if (data == MAP_FAILED)
      throw std::runtime_error("cannot map " + path + ": " + std::strerror(error));
    data_ = static_cast<const uint8_t*>(data);
  } else {
    ::close(fd);
  }
}

Mapping::~Mapping() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

MappedTensor::MappedTensor(std::shared_ptr<const Mapping> mapping_, size_t offset_,
                           mx::Shape shape_, mx::Dtype dtype_)
    : mapping(std::move(mapping_)), offset(offset_), shape(std::move(shape_)), dtype(dtype_) {
  if (!mapping) throw std::invalid_argument("MappedTensor: no mapping");
  for (auto d : shape)
    if (d < 0) throw std::invalid_argument("MappedTensor: negative dimension");
  if (offset > mapping->size() || nbytes() > mapping->size() - offset)
    throw std::invalid_argument("MappedTensor: bytes [" + std::to_string(offset) + ", " +
                                std::to_string(offset + nbytes()) + ") are outside " +
                                mapping->path() + " (" + std::to_string(mapping->size()) +
                                " bytes)");
}

size_t MappedTensor::size() const {
  size_t n = 1;
  for (auto d : shape) n *= size_t(d);
  return n;
}

MappedTensor MappedTensor::rows(int64_t start, int64_t stop) const {
  if (shape.empty() || start < 0 || stop < start || stop > shape[0])
    throw std::invalid_argument("MappedTensor.rows: [" + std::to_string(start) + ", " +
                                std::to_string(stop) + ") is not a range of the leading axis");
  const size_t row_bytes = shape[0] ? nbytes() / size_t(shape[0]) : 0;
  mx::Shape sub = shape;
  sub[0] = int32_t(stop - start);
  return MappedTensor(mapping, offset + size_t(start) * row_bytes, std::move(sub), dtype);
}

mx::array MappedTensor::copy() const {
  // MLX's raw-pointer constructor copies on the CPU (its documented fallback). The deleter
  // holds the mapping, so were a later MLX to use the bytes in place, they would stay mapped
  // for as long as the array lives.
  return mx::array(const_cast<uint8_t*>(data()), shape, dtype, [keep = mapping](void*) {});
}

bool MappedTensor::same_bytes(const MappedTensor& other) const {
  return mapping == other.mapping && offset == other.offset && shape == other.shape &&
         dtype == other.dtype;
}

}  // namespace openharmony
