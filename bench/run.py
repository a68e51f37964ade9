"""Times every pycnn op against its torch.nn.functional twin, in one process, interleaved.

    python -m bench                      # every CPU case, float32
    python -m bench --quick              # fewer repeats, shorter peaks (~1-2 minutes on 2 cores)
    python -m bench --filter conv2d --repeat 30
    python -m bench --device cuda --markdown --out bench/results/cuda.md
    python bench/run.py --list

Each case is validated before it is timed (forward output, and for fwd+bwd cases every
gradient); a mismatch aborts that case loudly and makes the exit status 1. A case whose op is
not written yet prints "skipped: <reason>".
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` (and the tree's pycnn) importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench import cases as bench_cases  # noqa: E402
from bench.harness import (DTYPES, Settings, header_lines, markdown, measure_peaks,  # noqa: E402
                           run_cases, summary)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--filter", metavar="SUBSTRING", help="only cases whose name or shape contains this")
    p.add_argument("--repeat", type=int, help="timed pairs per case (default 15, --quick 5)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and a time cap per case")
    p.add_argument("--threads", type=int, help="torch (and so pycnn) thread count")
    p.add_argument("--isa", choices=("avx512", "avx2", "neon", "generic"),
                   help="pycnn's CPU target (default: the best this CPU runs; see pycnn.cpu_isa())")
    p.add_argument("--markdown", action="store_true", help="print a markdown table (for the README)")
    p.add_argument("--out", metavar="FILE", help="also write the markdown table to FILE")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]
    if args.repeat is not None and args.repeat < 1:
        print(f"bench: --repeat must be >= 1, got {args.repeat}", file=sys.stderr)
        return 2
    if args.isa:  # before pycnn is imported (cases run in subprocesses see it too)
        os.environ["PYCNN_CPU_ISA"] = args.isa
    # Listing and filtering need names only: targets depend on the target, use avx2's here.
    chosen = bench_cases.select(bench_cases.all_cases(args.device, "avx2"), args.filter)
    if args.list:
        for c in chosen:
            print(f"{c.name:<34} {c.shape}")
        return 0
    if not chosen:
        print(f"bench: no case matches --filter {args.filter!r} (see --list)", file=sys.stderr)
        return 2

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("bench: --device cuda, but CUDA is not available to torch "
                  f"(torch {torch.__version__}); nothing to time.")
            return 0
        # Compare kernels doing the same arithmetic: TF32 would let torch round float32 inputs
        # to 10-bit mantissas on tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    elif dtype in (torch.float16, torch.bfloat16):
        print(f"bench: pycnn's CPU kernels support float32 and float64, not {args.dtype}", file=sys.stderr)
        return 2

    try:
        import pycnn
    except ImportError as e:
        print(f"bench: cannot import pycnn ({e}); build it first (scripts/dev_build.sh)", file=sys.stderr)
        return 1
    if args.isa and pycnn.cpu_isa() != args.isa:  # pycnn was imported before --isa was read
        try:
            pycnn._C.set_cpu_isa(args.isa)
        except ValueError as e:
            print(f"bench: --isa {args.isa}: {e}", file=sys.stderr)
            return 2
    chosen = bench_cases.select(bench_cases.all_cases(args.device, pycnn.cpu_isa()), args.filter)
    if args.device == "cuda" and not pycnn.cuda_available():
        print("bench: --device cuda, but this pycnn build has no CUDA kernels (pycnn._C_cuda); "
              "rebuild with scripts/dev_build.sh cuda. Nothing to time.")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    pycnn.sync_threads()

    settings = Settings(device=args.device, dtype=dtype, quick=args.quick)
    if args.quick:
        # the validation call is the warm-up; at least min_pairs (3) pairs, then stop at 4 s
        settings.repeat, settings.warmup, settings.max_seconds = 5, 0, 4.0
    if args.repeat is not None:
        settings.repeat = args.repeat

    peaks = measure_peaks(settings)
    if not args.markdown:
        for line in header_lines(settings, peaks):
            settings.print(line)
        settings.print()
    results = run_cases(chosen, settings, peaks)
    table = markdown(settings, peaks, results)
    if args.markdown:
        print()
        print(table, end="")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)
    print(summary(results))
    failed = [r for r in results if r.status in ("MISMATCH", "ERROR")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
