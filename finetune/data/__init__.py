"""Data preparation: read, clean, scrub, deduplicate, balance and split conversations."""
