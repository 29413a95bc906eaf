"""Output and storage: checkpoint, RNG state, output directory, files, cache, code hash, the search report and its formatting."""
