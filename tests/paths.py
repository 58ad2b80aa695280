"""Where things are: the repository root (for configs, scripts and a working directory)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
