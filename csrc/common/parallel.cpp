#include "common/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <cstdlib>
#include <cstring>
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


// ---- torch's OpenMP team ------------------------------------------------------------------
//
// torch runs its own ops on an OpenMP team whose idle threads spin-wait for a while after each
// op. Measured on the 2-core dev machine: between torch ops (ReLU, add, the optimizer) those
// spinning threads took the second core from our pool and a ResNet-20 training step ran 2.3x
// torch's time; with OMP_WAIT_POLICY=passive, 1.2x. So when the process already has an OpenMP
// runtime loaded (torch's), our parallel regions run on that same team through its GOMP_parallel
// entry point: the spinning threads pick our work up instead of competing with it. We find the
// runtime torch loaded (dl_iterate_phdr) and call it through dlsym, so nothing links against it
// and no second runtime is ever loaded. PYCNN_THREADS=pool keeps our own pool.

using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpThreadNum = int (*)();

struct OpenMpTeam {
  GompParallel parallel = nullptr;
  OmpThreadNum thread_num = nullptr;
  std::string library;
};

int find_openmp_library(struct dl_phdr_info* info, size_t, void* out) {
  const char* name = info->dlpi_name;
  if (name && (std::strstr(name, "libgomp") || std::strstr(name, "libiomp") || std::strstr(name, "libomp"))) {
    *static_cast<std::string*>(out) = name;
    return 1;
  }
  return 0;
}

// After fork() the child has none of the parent's threads, but an OpenMP runtime initialised in
// the parent believes its team still exists (a parallel region would wait forever): a forked
// child uses our pool, built afresh, instead.
std::atomic<bool> g_forked_child{false};

const OpenMpTeam& openmp_team() {
  static const OpenMpTeam none;
  static const OpenMpTeam team = [] {
    pthread_atfork(nullptr, nullptr, [] {
      g_forked_child = true;
      g_pool = nullptr;
    });
    OpenMpTeam t;
    const char* env = std::getenv("PYCNN_THREADS");
    if (env && std::strcmp(env, "pool") == 0) return t;
    std::string path;
    dl_iterate_phdr(find_openmp_library, &path);
    if (path.empty()) return t;
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);  // the copy already loaded, or nothing
    if (!handle) return t;
    t.parallel = reinterpret_cast<GompParallel>(dlsym(handle, "GOMP_parallel"));
    t.thread_num = reinterpret_cast<OmpThreadNum>(dlsym(handle, "omp_get_thread_num"));
    if (!t.parallel || !t.thread_num) return OpenMpTeam{};
    t.library = path;
    return t;
  }();
  return g_forked_child ? none : team;
}

std::atomic<int> g_num_threads{0};  // 0: not set yet, use hardware_concurrency

struct TeamJob {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t n, step;
  OmpThreadNum thread_num;
  std::mutex mutex;
  std::exception_ptr error;
};

// Runs on every thread of the team: thread t does chunk t (the same chunks as the pool's).
void team_body(void* data) {
  auto* job = static_cast<TeamJob*>(data);
  int64_t b = int64_t(job->thread_num()) * job->step, e = std::min(job->n, b + job->step);
  bool outer = t_in_parallel;
  t_in_parallel = true;
  try {
    if (b < e) (*job->fn)(b, e);
  } catch (...) {  // an exception must not unwind through the OpenMP runtime's frames
    std::lock_guard<std::mutex> lock(job->mutex);
    if (!job->error) job->error = std::current_exception();
  }
  t_in_parallel = outer;
}

}  // namespace

std::string threading_backend() {
  const OpenMpTeam& team = openmp_team();
  return team.parallel ? "openmp:" + team.library : "pool";
}

int get_num_threads() {
  if (openmp_team().parallel) {
    int n = g_num_threads.load();
    if (n > 0) return n;
    static const int hw = std::max(1u, std::thread::hardware_concurrency());  // a syscall: once
    return hw;
  }
  return Pool::instance().size();
}

void set_num_threads(int n) {
  n = std::max(1, n);
  g_num_threads = n;
  if (!openmp_team().parallel) Pool::instance().resize(n);
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const OpenMpTeam& team = openmp_team();
  if (!team.parallel) {
    Pool::instance().run(n, grain, fn);
    return;
  }
  int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  int64_t chunks = std::min<int64_t>(get_num_threads(), max_chunks);
  if (chunks <= 1 || t_in_parallel) {
    fn(0, n);
    return;
  }
  TeamJob job;
  job.fn = &fn;
  job.n = n;
  job.step = (n + chunks - 1) / chunks;
  job.thread_num = team.thread_num;
  team.parallel(team_body, &job, unsigned(chunks), 0);
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace pycnn
