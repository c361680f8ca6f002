"""Planner: River surrogate and greedy min-GPU placer (pure; not built yet, see issue 7)."""

__all__: list[str] = []
