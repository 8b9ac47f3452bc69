"""What runs in the user's kernel: the notebook widgets (see the notebook-experience issue)."""
