// A fixed pool of worker threads for the kernels, one per usable core.
//
// MLX's CPU backend runs one operation at a time on its stream thread, so this pool and the
// BLAS (MKL) never compute at the same moment: neither oversubscribes the other. Workers spin
// briefly after a job (the next kernel of a token usually follows within microseconds), then
// sleep.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace openharmony {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }  // the calling thread works too

  // Runs task(i) for every i in [0, count), spread over the pool; returns when all are done.
  // One job at a time: a call made while another runs (a second MLX CPU stream) runs its
  // items on its own thread instead of waiting.
  void parallel_for(int64_t count, const std::function<void(int64_t)>& task);

  // The process-wide pool: OPENHARMONY_THREADS threads, or the cores this process may use.
  static ThreadPool& global();

 private:
  void work(const std::function<void(int64_t)>* task);
  void worker_loop();

  std::vector<std::thread> workers_;
  std::mutex job_;  // held by the caller whose job the workers run
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<const std::function<void(int64_t)>*> task_{nullptr};
  std::atomic<int64_t> next_{0};
  int64_t count_{0};
  std::atomic<int> busy_{0};
  bool stop_{false};
};

}  // namespace openharmony
