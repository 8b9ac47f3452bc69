# JupyterHub configuration for the benchmarks' peer: stock batchspawner
# SlurmSpawner on the same site settings ($BIOIMAGE_GATEWAY_CONFIG), the same
# local Slurm, the same session environment and the same resources as ours
# (1 CPU, 1 GB, partition "interactive"); users sign in with local passwords.
import os

from bioimage_gateway.hub_config.demo_auth import DemoAuthenticator, read_users
from bioimage_gateway.settings import load_settings

s = load_settings()
env_bin = str(s.session.environment / "bin")
c = get_config()  # noqa: F821 - provided by JupyterHub
c.JupyterHub.bind_url = f"http://{s.hub.ip}:{s.hub.port}"
c.JupyterHub.hub_bind_url = f"http://{s.hub.api_ip}:{s.hub.api_port}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{s.hub.proxy_api_port}"
c.JupyterHub.db_url = f"sqlite:///{s.hub.data_dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret = os.urandom(32)
c.JupyterHub.cleanup_servers = False
c.JupyterHub.authenticator_class = DemoAuthenticator
c.DemoAuthenticator.users_file = str(s.auth.users_file)
c.Authenticator.allowed_users = set(read_users(s.auth.users_file))
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.req_partition = "interactive"
c.SlurmSpawner.req_nprocs = "1"
c.SlurmSpawner.req_memory = "1G"
c.SlurmSpawner.req_runtime = "1:00:00"
c.SlurmSpawner.startup_poll_interval = 0.5
c.SlurmSpawner.batchspawner_singleuser_cmd = env_bin + "/batchspawner-singleuser"
c.SlurmSpawner.req_prologue = "export PATH=" + env_bin + ":$PATH"
c.Spawner.cmd = [env_bin + "/jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"
# Stock runs squeue/scancel with the hub's environment, sbatch with the spawner's.
os.environ["SLURM_CONF"] = str(s.slurm.conf)
c.Spawner.environment = {"SLURM_CONF": str(s.slurm.conf)}
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 60
