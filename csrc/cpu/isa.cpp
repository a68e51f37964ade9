// Picks the kernel target once, at import: the best one this CPU runs, or PYCNN_CPU_ISA's.
// Compiled for the baseline only (it runs before anyone knows what the CPU has).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace pycnn::cpu {

// The per-target tables this build has (CMake defines PYCNN_HAVE_ISA_<NAME> for each).
#if defined(PYCNN_HAVE_ISA_AVX512)
namespace avx512 { extern const KernelTable table; }
#endif
#if defined(PYCNN_HAVE_ISA_AVX2)
namespace avx2 { extern const KernelTable table; }
#endif
#if defined(PYCNN_HAVE_ISA_NEON)
namespace neon { extern const KernelTable table; }
#endif
namespace generic { extern const KernelTable table; }

namespace {

struct Target {
  const char* name;
  const KernelTable* table;  // null: not in this build
  bool (*cpu_runs)();
};

bool always() { return true; }
bool never() { return false; }
#if defined(__x86_64__) || defined(__i386__)
bool cpu_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
}
bool cpu_avx512() {
#if defined(PYCNN_EMULATE_AVX512)
  return cpu_avx2();  // a test build: the avx512 kernels run on AVX2 instructions (csrc/simd/vec.h)
#else
  return cpu_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
#endif
}
#endif

// Lowest first: "higher" means needs more of the CPU.
const std::vector<Target>& targets() {
  static const std::vector<Target> all = {
      {"generic", &generic::table, always},
#if defined(PYCNN_HAVE_ISA_NEON)
      {"neon", &neon::table, always},
#else
      {"neon", nullptr, never},
#endif
#if defined(PYCNN_HAVE_ISA_AVX2)
      {"avx2", &avx2::table, cpu_avx2},
#else
      {"avx2", nullptr, never},
#endif
#if defined(PYCNN_HAVE_ISA_AVX512)
      {"avx512", &avx512::table, cpu_avx512},
#else
      {"avx512", nullptr, never},
#endif
  };
  return all;
}

std::atomic<const KernelTable*> g_active{nullptr};
std::atomic<bool> g_winograd{true};
std::atomic<int> g_winograd4x4{0};

const KernelTable& choose(const std::string& name) {
  for (const Target& t : targets()) {
    if (name != t.name) continue;
    if (!t.table)
      throw std::invalid_argument("PYCNN_CPU_ISA=" + name + ": this build of pycnn has no " + name +
                                  " kernels (it has: " + [] {
                                    std::string s;
                                    for (const Target& u : targets())
                                      if (u.table) s += (s.empty() ? "" : ", ") + std::string(u.name);
                                    return s;
                                  }() + ")");
    if (!t.cpu_runs())
      throw std::invalid_argument("PYCNN_CPU_ISA=" + name + ": this CPU does not support " + name +
                                  " (it runs: " + [] {
                                    std::string s;
                                    for (const std::string& u : available_isas()) s += (s.empty() ? "" : ", ") + u;
                                    return s;
                                  }() + ")");
    return *t.table;
  }
  throw std::invalid_argument("PYCNN_CPU_ISA=" + name + ": unknown target (one of generic, neon, avx2, avx512)");
}

}  // namespace

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const Target& t : targets())
    if (t.table && t.cpu_runs()) names.push_back(t.name);
  return names;
}

std::string select_isa() {
  const KernelTable* current = g_active.load();
  if (current) return current->isa;
  const char* env = std::getenv("PYCNN_CPU_ISA");
  const KernelTable* chosen = nullptr;
  if (env && *env) {
    chosen = &choose(env);
  } else {
    chosen = &choose(available_isas().back());
  }
  const KernelTable* expected = nullptr;
  g_active.compare_exchange_strong(expected, chosen);
  return g_active.load()->isa;
}

const KernelTable& kernels() {
  const KernelTable* t = g_active.load(std::memory_order_acquire);
  if (!t) {
    select_isa();
    t = g_active.load();
  }
  return *t;
}

std::string set_cpu_isa(const std::string& name) {
  const KernelTable& next = choose(name);
  const std::string previous = kernels().isa;
  g_active.store(&next);
  return previous;
}

bool set_conv_winograd(bool enabled) { return g_winograd.exchange(enabled); }
bool conv_winograd_enabled() { return g_winograd.load(std::memory_order_relaxed); }
int set_conv_winograd4x4(int mode) { return g_winograd4x4.exchange(std::clamp(mode, 0, 2)); }
int conv_winograd4x4_mode() { return g_winograd4x4.load(std::memory_order_relaxed); }

}  // namespace pycnn::cpu
