"""What a demo run is: its sizes, training and traffic (``DemoConfig``; ``QUICK`` for
``--quick``), the name v1 is served under, the gate spec, and the demo's own folders."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

GATE_SPEC = Path(__file__).resolve().parents[2] / "fixtures" / "gates" / "default.toml"
SERVED = "support-v1"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes, training and traffic of one demo run (``QUICK``: the same loop, smaller)."""

    size: str = "default"  # the base model's
    chitchat: int = 300  # chit-chat conversations mixed into v1's data: general replies kept
    drift_chitchat: int = 300  # other chit-chat conversations in the drift episode's pool
    # Prompts the episode draws from, each sent about six times: every one of them is then
    # flagged or rated low at least once whatever the windows' timing, so the corrections, and
    # every figure after them, are the same on a second run.
    drift_prompts: int = 50
    v1_epochs: float = 4.0
    v2_epochs: float = 2.0
    learning_rate: float = 1e-3
    max_new_tokens: int = 48  # evaluation's generation
    reply_tokens: int = 32  # what the replayed traffic asks for
    rate: float = 10.0  # requests per second (two busy CPU cores answer about that many)
    calm_s: float = 25.0  # support questions first: windows judged, no alert
    drift_s: float = 30.0  # the episode at least, and on until the alert: ~6 sends a prompt
    window_events: int = 50  # the drift job's window (50: the least a feature is judged on)
    # A pass per window's worth of traffic (window_events / rate): the windows barely overlap,
    # so a chance drift in one window does not carry over into the next `hold - 1` passes.
    every_s: float = 5.0
    hold: int = 3
    n_resamples: int = 2000
    seed: int = 0


QUICK = DemoConfig(
    size="micro",
    chitchat=150,
    drift_chitchat=100,
    v1_epochs=3.0,
    v2_epochs=3.0,
    learning_rate=3e-3,
    max_new_tokens=16,
    reply_tokens=16,
    calm_s=15.0,
    drift_s=25.0,
    n_resamples=1000,
)


def fresh(path: Path) -> Path:
    """The demo's own folder ``path``, emptied of a previous demo run."""
    if path.exists():
        shutil.rmtree(path)
    return path
