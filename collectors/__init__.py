"""Energy sources, one file each: RAPL (powercap), NVML, the CPU-time estimate, replayed traces."""
