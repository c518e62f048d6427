"""Training: data, the projected-gradient loop, checkpoints, projected optimizer steps, DDP."""
