"""The embedded LLM engine: a Llama-architecture model on the CPU over a paged KV cache.

Rooms with one door each (as vLLM's v1 core): `model.py` (the transformer), `paged_cache.py` (the
physical K/V blocks), `block_pool.py` and `kv_cache.py` (which blocks belong to whom: prefix
reuse, LRU, leases), `scheduler.py` (continuous batching), `engine.py` (the step loop),
`server.py` (the OpenAI-compatible HTTP API). `batch.py` is the contract between the scheduler
side and the model side.
"""
