// A small persistent thread pool for the CPU kernels.
//
// Why not compile with OpenMP: torch ships its own OpenMP runtime; a second one in the same
// process spins against torch's and oversubscribes the cores. So parallel_for runs on the
// OpenMP team torch itself loaded, when there is one (found at run time, never linked), and
// otherwise on our own small pool, which sleeps on a condition variable when idle. Either way the
// thread count follows torch.get_num_threads() (set from Python).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace pycnn {

// "openmp:<library>" when parallel regions run on the OpenMP team torch already loaded (see
// parallel.cpp for why), else "pool" (our own threads).
std::string threading_backend();

// Number of threads the kernels may use (the calling thread counts as one).
int get_num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint chunks covering [0, n), at least `grain` items a chunk,
// on up to get_num_threads() threads. Runs inline when the work is small or we are already
// inside a parallel region (no nested parallelism). Blocks until all chunks are done.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace pycnn
