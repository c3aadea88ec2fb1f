"""The pocket world: procedurally drawn subjects, 64x64 scenes with ground-truth boxes, their records and
PocketBench, small enough that every stage of the PSR loop runs on a CPU (GitHub issue #18)."""
