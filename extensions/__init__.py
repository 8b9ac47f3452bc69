"""What runs in the user's Jupyter server and its Slurm job."""
