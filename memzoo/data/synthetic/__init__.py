"""Synthetic recall tasks (registered with memzoo.data.tasks.register_task)."""
