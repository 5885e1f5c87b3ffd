"""hetagent.kernels"""
