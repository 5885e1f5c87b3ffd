"""Decode throughput of the embedded engine against Hugging Face transformers, same weights.

Both run SmolLM2-135M-Instruct from the same GGUF file (the engine through its own loader,
transformers through `from_pretrained(gguf_file=...)`, which dequantizes to float32 like the
engine), on the same CPU threads, in the same run. Batch B of distinct random prompts of
--prompt-tokens tokens each, --new-tokens generated per sequence, EOS ignored.

- engine: B / the median time of the steps in which all B sequences decode (prefill steps
  excluded);
- transformers: B / the median time between two decode steps of `generate()` (a logits
  processor records when each step's logits are ready);
- roofline (batch 1): memory bandwidth measured here with a large torch copy (read + write
  bytes / time); a decode step must read every weight once plus the KV of its context, so its
  lower bound is (weight bytes + KV bytes) / bandwidth; the fraction is that bound over the
  engine's measured step time.

Medians over the steps of --runs repeats (a median step resists the other processes that
share this machine's cores). Prints a table and writes benchmarks/results/engine_throughput.json.
Targets (issue 5): >= 3x transformers at batch 16; batch-1 decode >= 60% of the roofline.

    python benchmarks/engine_throughput.py [--batches 1 4 16] [--runs 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from hetagent.backends.local.engine.batch import SamplingParams
from hetagent.backends.local.engine.engine import LLMEngine
from hetagent.backends.local.engine.models import cached_path, load

RESULTS = Path(__file__).parent / "results" / "engine_throughput.json"
MODEL = "smollm2-135m"


def measure_bandwidth(runs: int, mib: int = 256) -> float:
    """Bytes/s of a large tensor copy (each element read once and written once)."""
    src = torch.rand(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages first
    speeds = []
    for _ in range(max(runs, 3)):
        start = time.perf_counter()
        dst.copy_(src)
        speeds.append(2 * src.numel() * 4 / (time.perf_counter() - start))
    return statistics.median(speeds)


def prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 100, (batch, length), generator=generator).tolist()


def engine_decode(loaded, batch: int, prompt_len: int, new: int, seed: int) -> float:
    """Median seconds of the engine's steps in which all `batch` sequences decode."""
    engine = LLMEngine(
        loaded,
        kv_memory_mb=256,
        block_size=16,
        max_num_seqs=batch,
        max_num_batched_tokens=max(256, batch * prompt_len),
        ignore_eos=True,
    )
    for ids in prompts(batch, prompt_len, loaded.config.vocab_size, seed):
        engine.add_request(ids, SamplingParams(max_tokens=new, temperature=0.0))
    steps = []
    while engine.has_unfinished():
        start = time.perf_counter()
        engine.step()
        elapsed = time.perf_counter() - start
        last = engine.last_step
        if last.num_decode_sequences == batch and last.num_prefill_sequences == 0:
            steps.append(elapsed)
    return statistics.median(steps)


def hf_decode(model, batch: int, prompt_len: int, new: int, vocab: int, seed: int) -> float:
    """Median seconds of one decode step of transformers' generate() (greedy, with its KV
    cache): the time between consecutive calls of a logits processor, which generate() calls
    once per step after the forward pass."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepTimer(LogitsProcessor):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    ids = torch.tensor(prompts(batch, prompt_len, vocab, seed))
    timer = StepTimer()
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            logits_processor=LogitsProcessorList([timer]),
        )
    return statistics.median(b - a for a, b in zip(timer.times, timer.times[1:], strict=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    loaded = load(MODEL)
    gguf = cached_path(MODEL)
    hf = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    vocab = loaded.config.vocab_size

    # warm both up (first calls allocate and pick kernels)
    engine_decode(loaded, 2, 16, 4, seed=99)
    hf_decode(hf, 2, 16, 4, vocab, seed=99)

    load_before = os.getloadavg()[0]
    bandwidth = measure_bandwidth(args.runs)
    rows: dict[str, dict[str, float]] = {}
    for batch in args.batches:
        ours, theirs = [], []
        for run in range(args.runs):  # interleaved, so both see the same load on shared cores
            ours.append(engine_decode(loaded, batch, args.prompt_tokens, args.new_tokens, run))
            theirs.append(hf_decode(hf, batch, args.prompt_tokens, args.new_tokens, vocab, run))
        step, hf_step = statistics.median(ours), statistics.median(theirs)
        row = {
            "engine_tokens_per_s": batch / step,
            "transformers_tokens_per_s": batch / hf_step,
            "engine_step_seconds": step,
            "transformers_step_seconds": hf_step,
            "speedup": hf_step / step,
        }
        rows[str(batch)] = row
        print(
            f"batch {batch:>3}: engine {row['engine_tokens_per_s']:8.1f} tok/s   "
            f"transformers {row['transformers_tokens_per_s']:8.1f} tok/s   "
            f"speedup {row['speedup']:.2f}x"
        )

    c = loaded.config
    context = args.prompt_tokens + args.new_tokens / 2  # mean context over the decode steps
    kv_bytes = context * 2 * c.layers * c.kv_heads * c.head_dim * loaded.model.dtype.itemsize
    step_bytes = loaded.model.weight_bytes() + kv_bytes
    roofline_seconds = step_bytes / bandwidth
    fraction = None
    if "1" in rows:
        fraction = roofline_seconds / rows["1"]["engine_step_seconds"]
        print(
            f"batch 1 decode step {rows['1']['engine_step_seconds'] * 1e3:.1f} ms; roofline "
            f"{roofline_seconds * 1e3:.1f} ms ({step_bytes / 2**20:.0f} MiB at "
            f"{bandwidth / 1e9:.1f} GB/s): {fraction:.0%} of the roofline"
        )
    result = {
        "model": MODEL,
        "baseline": f"transformers {__import__('transformers').__version__} generate(), "
        "same GGUF dequantized to float32",
        "speedup_vs_transformers": {b: r["speedup"] for b, r in rows.items()},
        "roofline_fraction_bs1": fraction,
        "per_batch": rows,
        "bandwidth_bytes_per_s": bandwidth,
        "decode_step_bytes_bs1": step_bytes,
        "weight_bytes": loaded.model.weight_bytes(),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "torch_threads": torch.get_num_threads(),
        # 1-minute load average of this machine (2 cores, shared): above ~1.5 the figures are noisy
        "load_average": {"start": load_before, "end": os.getloadavg()[0]},
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
