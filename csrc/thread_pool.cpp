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

// How long a worker spins for the next job (and the caller for its workers) before sleeping.
// Spinning burns a core the MLX stream thread may need on a 2-core machine, and since the
// caller no longer waits for a sleeping worker (parallel_for) a short spin loses little: on
// the tiny model's decode step (2 layers, many small calls) 200 us gave 3.8-4.7 ms, 50 us
// 2.9-4.0 ms on the loaded machine.
constexpr auto kSpin = std::chrono::microseconds(50);

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

void ThreadPool::work(const std::function<void(int64_t)>* task, int64_t count) {
  for (int64_t i; (i = next_.fetch_add(1)) < count;) (*task)(i);
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
    task_ = &task;
    count_ = count;
    next_.store(0);
    left_.store(0);
    joined_ = 0;
    open_ = true;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  work(&task, count);
  // Every item is claimed: close the job, then wait for the workers that joined it to finish
  // theirs. No worker can join after this, so none touches `task` after we return.
  int joined;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = false;
    joined = joined_;
  }
  auto start = std::chrono::steady_clock::now();
  while (left_.load() != joined) {
    if (std::chrono::steady_clock::now() - start > kSpin) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return left_.load() == joined; });
      break;
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    // Spin a little for the next job, then sleep until one is posted.
    auto start = std::chrono::steady_clock::now();
    while (generation_.load() == seen &&
           std::chrono::steady_clock::now() - start < kSpin) {
    }
    const std::function<void(int64_t)>* task;
    int64_t count;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      seen = generation_.load();
      if (stop_) return;
      if (!open_) continue;  // woke after the job was closed: nothing to do
      ++joined_;
      task = task_;
      count = count_;
    }
    work(task, count);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      left_.fetch_add(1);
    }
    done_.notify_one();
  }
}

}  // namespace openharmony
