"""Drills on a whole pipeline of its own: `make chaos` (faults) and `make load` (steady load)."""
