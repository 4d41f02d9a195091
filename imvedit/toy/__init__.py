"""The shapes world: a tiny synthetic domain with exact ground truth for pretraining and evaluating edits."""
