"""The demo: the platform's closed loop on the embedded default, end to end, in one command.

1. build the base model (or load it from the cache);
2. prepare the support-domain dataset (the support FAQ with chit-chat mixed in), and the pool of
   other topics and chit-chat that the drift episode draws from, each with held-out test splits;
3. fine-tune v1 on the support data;
4. evaluate the base model and v1 on one suite: perplexity and BLEU/chrF (with the content
   control) on held-out support questions, and the bias probes;
5. gate v1 against the base (``fixtures/gates/default.toml``) and write the reports;
6. serve v1 (``evalkit serve`` in the background, with its drift job), scraped by a real
   Prometheus that sends alerts to a real Alertmanager where both are installed;
7. replay traffic: held-out support questions, then a drift episode of other topics and
   chit-chat; simulated users send feedback (the rule of :mod:`evalkit.rating.simulated`);
8. queue the drifted and the low-rated exchanges for rating;
9. a simulated annotator (``simulated-annotator``: a simulation, not a person) scores and
   corrects them, its corrections the reference answers of the held-out data;
10. prepare the next dataset over the event log, the corrections and v1's data, and put the
    corrected exchanges that its split holds out into the regression set;
11. fine-tune v2 from v1;
12. evaluate v1 and v2 on the support domain, the drifted topics and the regression set, and gate
    v2 against v1;
13. print the summary: what changed with intervals, whether the claims hold, where each report
    lies, the lineage of v2, and the command that opens the app.

Every artifact lands in the workspace; the demo's own files (suites, gate specs, the drift
reference, the monitoring configs and logs, ``summary.json``) in ``WORKSPACE/demo``. Everything
is seeded: a second run gives the same figures (``Summary.fingerprint``).

``loop`` runs the steps in order; the modules beside it hold the parts of the loop: ``data``
(1-2), ``release`` (fine-tune, evaluate and gate a version: 3-5, 11-12), ``serving`` (6-7),
``feedback`` (8-10, where the loop closes) and ``summary`` (13); ``config`` and ``progress``
what they share.
"""

from evalkit.demo.loop import run_demo

__all__ = ["run_demo"]
