"""Pieces shared by every task: keys, I/O, checkpoints, the trainer, metrics, seeding, plots."""
