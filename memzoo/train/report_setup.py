"""The start-up report: mesh, per-device bytes of the train state, host memory pages, the
compiled step's memory."""

import math

import jax

from memzoo.train import huge_pages


def per_device_bytes(abstract_tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard per leaf)."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * leaf.dtype.itemsize
  return total


def _mib(n: float) -> str:
  return f"{n / 2**20:,.1f} MiB"


def describe(mesh, abstract_state, compiled_step) -> str:
  axes = ", ".join(f"{name}={size}" for name, size in mesh.shape.items())
  lines = [f"mesh: {axes} ({mesh.size} devices, {jax.process_count()} processes, "
           f"{jax.devices()[0].platform})",
           f"per device: params {_mib(per_device_bytes(abstract_state.params))}, "
           f"optimizer state {_mib(per_device_bytes(abstract_state.opt_state))}",
           f"host memory pages: {huge_pages.describe()}"]
  memory = compiled_step.memory_analysis()
  if memory is not None:
    lines.append(f"compiled step per device: arguments {_mib(memory.argument_size_in_bytes)}, "
                 f"outputs {_mib(memory.output_size_in_bytes)}, "
                 f"temporaries {_mib(memory.temp_size_in_bytes)}, "
                 f"code {_mib(memory.generated_code_size_in_bytes)}")
  return "\n".join(lines)


def describe_flops(flops_per_step: float, peak: float, source: str, dtype) -> str:
  return (f"model FLOPs per train step (forward + backward): {flops_per_step:.3e}; MFU peak "
          f"{peak:.3e} FLOP/s in {dtype} ({source})")
