"""Side-by-side benchmarks of pycnn against torch: `python -m bench --help`."""
import glob as _glob
import os as _os
import sys as _sys

# `python -m bench` run from a checkout puts the checkout first on sys.path. When pycnn was
# pip-installed (its compiled modules are in site-packages, not in the checkout's pycnn/),
# drop the checkout so `import pycnn` finds the installed package rather than bare sources.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _glob.glob(_os.path.join(_root, "pycnn", "_C.*")):
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or ".") != _root]
