"""Synthetic recall tasks, registered with `memzoo.data.tasks.register_task` on import: `mqar`,
`niah`, `selective_copy`, `induction`, `facts` (see each module for the exact construction)."""

from memzoo.data.synthetic import facts, induction, mqar, niah, selective_copy  # noqa: F401
