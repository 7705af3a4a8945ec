#include "thread_pool.h"

#include <chrono>
#include <cstdlib>
#include <string>

#if defined(__linux__)
#include <sched.h>
#endif

namespace openharmony {

namespace {

int usable_cores() {
  if (const char* env = std::getenv("OPENHARMONY_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

constexpr auto kSpin = std::chrono::microseconds(200);

}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

ThreadPool& ThreadPool::global() {
  // Never destroyed: worker threads must not be joined during static destruction, when MLX's
  // own threads may still be finishing a task that uses the pool.
  static ThreadPool* pool = new ThreadPool(usable_cores());
  return *pool;
}

void ThreadPool::work(const std::function<void(int64_t)>* task) {
  for (int64_t i; (i = next_.fetch_add(1)) < count_;) (*task)(i);
}

void ThreadPool::parallel_for(int64_t count, const std::function<void(int64_t)>& task) {
  if (count <= 0) return;
  std::unique_lock<std::mutex> job(job_, std::try_to_lock);
  if (workers_.empty() || count == 1 || !job.owns_lock()) {
    for (int64_t i = 0; i < count; ++i) task(i);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    count_ = count;
    next_.store(0);
    busy_.store(int(workers_.size()));
    task_.store(&task);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  work(&task);
  // Wait for the workers to leave the job (each decrements busy_ once).
  auto start = std::chrono::steady_clock::now();
  while (busy_.load() != 0) {
    if (std::chrono::steady_clock::now() - start > kSpin) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return busy_.load() == 0; });
      break;
    }
  }
  task_.store(nullptr);
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    // Spin a little for the next job, then sleep until one is posted.
    auto start = std::chrono::steady_clock::now();
    while (generation_.load() == seen &&
           std::chrono::steady_clock::now() - start < kSpin) {
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      seen = generation_.load();
      if (stop_) return;
    }
    work(task_.load());
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (busy_.fetch_sub(1) == 1) done_.notify_one();
    }
  }
}

}  // namespace openharmony
