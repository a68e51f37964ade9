#include "common/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include <pthread.h>
#include <vector>

namespace pycnn {
namespace {

thread_local bool t_in_parallel = false;

class Pool;
Pool* g_pool = nullptr;

class Pool {
 public:
  static Pool& instance() {
    // Leaked on purpose: joining threads during interpreter shutdown can deadlock.
    // After fork() the child has none of the parent's worker threads (and the parent's mutexes
    // may be held), so the child drops the old pool and lazily builds its own.
    static std::once_flag once;
    std::call_once(once, [] { pthread_atfork(nullptr, nullptr, [] { g_pool = nullptr; }); });
    if (!g_pool) g_pool = new Pool();
    return *g_pool;
  }

  int size() const { return num_threads_.load(); }

  void resize(int n) {
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    n = std::max(1, n);
    num_threads_ = n;
    std::unique_lock<std::mutex> lock(mutex_);
    while (static_cast<int>(workers_.size()) < n - 1) {
      workers_.emplace_back([this, id = static_cast<int>(workers_.size())] { worker_loop(id); });
      workers_.back().detach();
    }
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    int threads = size();
    int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
    int64_t chunks = std::min<int64_t>(threads, max_chunks);
    if (chunks <= 1 || t_in_parallel) {
      fn(0, n);
      return;
    }
    // One parallel region at a time; a second caller (another Python thread) waits.
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    int64_t step = (n + chunks - 1) / chunks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      job_n_ = n;
      job_step_ = step;
      job_chunks_ = chunks;
      next_chunk_ = 1;  // chunk 0 is the caller's
      pending_ = chunks - 1;
      error_ = nullptr;
      ++generation_;
    }
    cv_work_.notify_all();
    t_in_parallel = true;
    try {
      fn(0, std::min(n, step));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    // The caller also helps with remaining chunks, so a slow-to-wake worker costs nothing.
    drain();
    t_in_parallel = false;
    std::unique_lock<std::mutex> lock(mutex_);
    cv_done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  Pool() {
    unsigned hw = std::thread::hardware_concurrency();
    resize(hw ? static_cast<int>(hw) : 1);
  }

  // Takes and runs chunks until none is left. Called with the mutex NOT held.
  void drain() {
    for (;;) {
      int64_t c;
      const std::function<void(int64_t, int64_t)>* fn;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!job_ || next_chunk_ >= job_chunks_) return;
        c = next_chunk_++;
        fn = job_;
      }
      int64_t b = c * job_step_, e = std::min(job_n_, b + job_step_);
      try {
        if (b < e) (*fn)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) cv_done_.notify_all();
    }
  }

  void worker_loop(int id) {
    t_in_parallel = true;
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_work_.wait(lock, [&] { return generation_ != seen && id < num_threads_.load() - 1; });
        seen = generation_;
      }
      drain();
    }
  }

  std::atomic<int> num_threads_{1};
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable cv_work_, cv_done_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0, job_step_ = 0, job_chunks_ = 0, next_chunk_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  std::exception_ptr error_;
};

}  // namespace

int get_num_threads() { return Pool::instance().size(); }
void set_num_threads(int n) { Pool::instance().resize(n); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  Pool::instance().run(n, grain, fn);
}

}  // namespace pycnn
