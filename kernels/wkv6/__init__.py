"""WKV6, the RWKV-6 time-mix recurrence (arXiv 2404.05892): a PyTorch reference (reference.py), a CUDA kernel
(wkv6.cu) and its CuPy launcher (cupy.py), sharing one argument contract (checks.py). kernels.get("wkv6", backend)
picks an implementation; the CuPy launcher is imported only when asked for."""
