"""The local stack for tests and the demo: munge, Slurm, demo users; not part of a site's deployment."""
