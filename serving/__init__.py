"""Process plumbing for the server: data folder, malloc arenas, ZeroGPU, micro-batching."""
