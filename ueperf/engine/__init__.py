"""The one training loop, its schedule, checkpoints and timers (see trainer.py)."""
