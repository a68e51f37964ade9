"""Side-by-side benchmarks of pycnn against torch: `python -m bench --help`."""
