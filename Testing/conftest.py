"""Shared pytest setup: deterministic, single-process torch for small CPU tests."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
