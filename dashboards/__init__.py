"""The Streamlit app: one page per job of a person (Rate, Releases, Drift, Retrain, Admin).

Pages call the library and draw; every decision (roles, the queue, drafts, comparisons) is made
in ``evalkit`` or ``monitor``, where the library's tests see it.
"""
