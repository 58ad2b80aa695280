"""The benchmark scripts import each other as top-level modules (`python benchmarks/x.py` puts
their directory first on sys.path); the tests import them the same way."""

import sys

from tests.benchmarks.smoke import BENCHMARKS_DIR

sys.path.insert(0, str(BENCHMARKS_DIR))
