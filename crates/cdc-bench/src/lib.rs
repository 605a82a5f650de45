//! Helpers shared by the benchmarks under `src/bin/`.
