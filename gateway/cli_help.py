"""Help texts of the flags every command shares (one wording for each)."""

from __future__ import annotations

from twin.catalog import GPUS, MODELS

__all__ = ["GPU_HELP", "MODEL_HELP"]

MODEL_HELP = (f"the base model: a bundled one ({', '.join(sorted(MODELS))}), a Hugging Face "
              "config.json or a folder holding one (default %(default)s)")
GPU_HELP = (f"the GPU: a bundled one ({', '.join(sorted(GPUS))}) or its spec as JSON, "
            '\'{"name": ..., "memory_gib": ..., "tflops": ..., "bandwidth_gbps": ..., '
            '"interconnect_gbps": ...}\' (default %(default)s)')
