"""Data preparation and the training core."""
