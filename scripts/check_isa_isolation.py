"""Checks that no shareable symbol of a per-target kernel object carries that target's instructions.

Each kernel source is compiled once per target (csrc/simd/vec.h). Weak symbols (inline functions
and template instantiations, the standard library's included) are merged by the linker across
targets: if the avx2 or avx512 build of one held AVX instructions, the linker could keep that copy
and run it on a CPU without them. Only functions in the target's own namespace
(pycnn::cpu::<isa>::) may use them; those names are unique to the target.

    python scripts/check_isa_isolation.py BUILD_DIR     (a CMake build of pycnn, e.g. build/selftest)
"""
import re
import subprocess
import sys
from pathlib import Path

# VEX/EVEX-encoded instructions (vaddps, vmovss, vfmadd231ps...): AVX and later only. Their
# mnemonics start with "v"; verr/verw are old system instructions.
AVX_INSN = re.compile(r"^\s*[0-9a-f]+:\s+v(?!err|erw)[a-z0-9]+\b")


def weak_or_global_functions(obj: Path):
    out = subprocess.run(["nm", "--defined-only", str(obj)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if len(line.split()) == 3 and line.split()[1] in "TWV"}


def main(build_dir: str) -> int:
    bad, checked = [], 0
    for isa in ("avx2", "avx512"):
        own = f"pycnn::cpu::{isa}::"
        for obj in sorted(Path(build_dir).glob(f"CMakeFiles/pycnn_kernels_{isa}.dir/**/*.o")):
            shared = weak_or_global_functions(obj)
            dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                                  check=True).stdout
            name, flagged = None, set()
            for line in dump.splitlines():
                m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
                if m:
                    name = m.group(1)
                elif name in shared and AVX_INSN.search(line):
                    flagged.add(name)
            checked += 1
            if flagged:
                names = subprocess.run(["c++filt"], input="\n".join(sorted(flagged)), capture_output=True,
                                       text=True).stdout.split("\n")
                bad += [f"{obj.name} ({isa}): {n}" for n in names if n and not n.startswith(own)
                        and own not in n.split("(")[0]]
    if checked == 0:
        print(f"no per-target objects under {build_dir}", file=sys.stderr)
        return 2
    for b in bad:
        print("shared symbol with AVX instructions:", b)
    print(f"{checked} objects checked, {len(bad)} shared symbols with target instructions outside their namespace")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/selftest"))
