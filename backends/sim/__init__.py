"""The discrete-event simulator of heterogeneous clusters running agent programs.

Two ways in, one engine model (`engine.SimEngine`: continuous batching over a finite KV block
pool, prefix reuse, preemption by recompute, the real `kv_retention` and `scheduling` policy
classes, step times from the planner's `CostModel`):

- trace-driven, in pure virtual time (`simulator.Simulation`, `hetagent simulate`): programs
  from a JSONL trace (`traces`, or an agent's own programs from `agent_traces`) run on pools
  built from a Cluster and either a model on a pool or an agent's plan and fleet (`config`);
  this is what the studies use (benchmarks/kv_policy_study.py, benchmarks/tco_sim.py);
- the backend protocol (`backend.SimBackend`), for the runtime: a compiled plan runs on a
  simulated cluster in scaled real time, the runtime, checkpoints and hints all real.

Modules: `engine` (one replica), `simulator` (the event loop, programs, tools, transfers,
metrics), `traces` (format and generators), `agent_traces`, `oracle` (a retention policy told
the true tool durations), `config` (Cluster/agent/policy names -> a configuration), `cli`.
"""
