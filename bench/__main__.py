"""`python -m bench [options]`: every case, validated then timed (see bench/run.py)."""
import sys

from bench.run import main

sys.exit(main())
