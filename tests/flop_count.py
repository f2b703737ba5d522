"""An independent matmul-FLOP count for tests: walk a function's jaxpr and add up `dot_general`s
(`dot_equations` yields them for other checks).

Unlike XLA's cost analysis it multiplies loop bodies by their trip count (`scan`), so it checks
analytic counts on many chunks. `cond` counts its costliest branch; elementwise work is ignored.
"""

import math

import jax
from jax.extend import core


def _sub_jaxprs(params):
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, core.Jaxpr):
        yield item


def dot_equations(jaxpr):
  """Every `dot_general` equation of `jaxpr` and of the jaxprs nested in it (each body once)."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for sub in _sub_jaxprs(eqn.params):
      yield from dot_equations(sub)


def jaxpr_dot_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lhs_contract)
    elif eqn.primitive.name == "cond":
      total += max(jaxpr_dot_flops(b.jaxpr) for b in eqn.params["branches"])
    else:
      inner = sum(jaxpr_dot_flops(sub) for sub in _sub_jaxprs(eqn.params))
      total += inner * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
  return total


def dot_flops(fn, *args) -> int:
  """Matmul FLOPs of `fn(*args)` (args may be ShapeDtypeStructs)."""
  return jaxpr_dot_flops(jax.make_jaxpr(fn)(*args).jaxpr)
