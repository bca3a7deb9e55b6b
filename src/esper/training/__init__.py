"""Training: the one batch loop, optimizer ownership, signals, governor and episodes."""
