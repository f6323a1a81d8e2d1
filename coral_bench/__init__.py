"""coral-bench: speculative decoding benchmarks and speedup analysis (docs/design.md)."""
