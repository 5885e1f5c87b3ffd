"""hetagent.kernels: GPU kernels (Triton), each next to its torch reference and a dispatcher.

`paged_attention`: decode attention over a paged KV cache (the embedded engine's CUDA path).
"""
