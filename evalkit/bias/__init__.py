"""Bias probes: minimal pairs scored by likelihood and by generation, as evaluation rows.

>>> from evalkit.bias import bias_summary, likelihood_probe, load_probes
>>> results = likelihood_probe(model, tokenizer, load_probes().pairs)
>>> bias_summary(results, "stereo_preferred_shared")["overall"]
"""

from evalkit.bias.generation import (
    REFUSAL_PATTERNS,
    TOXIC_TERMS,
    generation_probe,
    is_refusal,
    load_terms,
    toxic_rate,
)
from evalkit.bias.likelihood import (
    CHAT_PROMPT,
    likelihood_probe,
    shared_positions,
)
from evalkit.bias.probes import PROBES, ProbeSet, PromptPair, SentencePair, load_probes
from evalkit.bias.summary import bias_summary

__all__ = [
    "CHAT_PROMPT",
    "PROBES",
    "REFUSAL_PATTERNS",
    "TOXIC_TERMS",
    "ProbeSet",
    "PromptPair",
    "SentencePair",
    "bias_summary",
    "generation_probe",
    "is_refusal",
    "likelihood_probe",
    "load_probes",
    "load_terms",
    "shared_positions",
    "toxic_rate",
]
