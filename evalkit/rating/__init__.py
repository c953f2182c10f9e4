"""The rating queue: items, annotators, rubrics, agreement reports and exports for training."""
