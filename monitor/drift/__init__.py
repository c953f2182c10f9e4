"""Drift: statistics that compare live traffic with a reference, and the detector."""
