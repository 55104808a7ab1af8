"""Hearth's benchmark: cold versus warm, beside the runtimes users would pick
instead. Standard library only. Run it through ``scripts/bench``."""
