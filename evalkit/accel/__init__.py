"""Every speedup of scoring, training and generation, behind one switch.

The plain code is the reference: :func:`evalkit.perplexity.sequence_nll` runs the whole model and
takes PyTorch's cross-entropy, and :class:`finetune.loss.TargetNLL` is the textbook next-token
loss. The fast path wraps them and checks itself against them on a few rows at run time, keeping
each speedup only where the numbers agree within rounding:

- :mod:`evalkit.accel.layers`: fused GELU, oneDNN linear layers (inference on the CPU);
- :mod:`evalkit.accel.output_layer`: the output layer run only at the scored tokens, its
  log-sum-exp in base 2 (scoring and training);
- :mod:`evalkit.accel.perplexity`: windows batched by a token budget, a small model's batches on
  one worker thread per core (:mod:`evalkit.accel.threads`);
- :mod:`evalkit.accel.decoding`: GPT-2 decoding with a cache slot per row, checked against
  :class:`evalkit.generation.PlainCache` (transformers' forward) on a model's first prompts.

The switch is the ``fast`` keyword of the scoring, training and generation entry points
(``None``: the process default), and ``EVALKIT_FAST=0`` in the environment turns every speedup
off for the process.
Figures are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os

ENV = "EVALKIT_FAST"


def enabled(fast: bool | None = None) -> bool:
    """Whether to take the fast path: ``fast`` when given, else on unless ``EVALKIT_FAST=0``."""
    if fast is not None:
        return fast
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")
