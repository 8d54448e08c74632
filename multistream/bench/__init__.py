"""Measurement tooling (`jobs/benchmark.py`): every figure a ratio against a baseline measured in the same run.

- `fresh`: runs a measure in a new interpreter (the baselines: no model, allocator or thread state shared);
- `baselines`: the extraction baselines (the plain sequential loop, each stage standalone, decode memory);
- `extraction`: the Ray Data extraction job against them (speedup, fraction of the ceiling, stages);
- `memory`: process-tree PSS sampling, peak RSS, memory vs video length;
- `training`: Ray Train (motion CNN, one RNN head) against a plain torch loop (`plain`) on the same data;
- `gpu`: GPU figures where CUDA is at hand;
- `scale`: the extraction job at archive scale, locally and on S3 (`--scale`, reports/scale.json);
- `inputs`: the benchmark's videos (demo sets or any input).

Modules a fresh process imports (`fresh`, `baselines`, `memory`, `plain`) import no Ray.
"""
