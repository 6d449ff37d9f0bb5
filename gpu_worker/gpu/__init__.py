"""The GPU engine: CuPy arrays and the CUDA kernels of ``kernels/``, equal to the CPU engine
bit for bit. The only package that imports CuPy, and only inside functions, so that it
imports on a machine without one."""
