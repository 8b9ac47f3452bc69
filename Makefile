# The two set-up commands (as root, on a fresh Debian 12 machine):
#   make demo   the whole gateway running locally, with sample data, in a browser
#   make test   installs what the tests need and runs every test
#
# The environment is built from Debian's /usr/bin/python3 under /opt, where the
# demo users' Slurm jobs can read it (a pyenv under /root cannot be).

PREFIX    ?= /opt/bioimage-gateway
VENV      ?= $(PREFIX)/venv
PYTHON    := /usr/bin/python3
# Empty: the demo makes a fresh private state directory (mkdtemp) and prints it.
STATE_DIR ?=
PORT      ?= 8000
PYTEST_ARGS ?=

.PHONY: demo test system venv benchmarks clean-demo

demo: system venv
	$(VENV)/bin/bioimage-gateway demo --port $(PORT) $(if $(STATE_DIR),--state-dir $(STATE_DIR))

test: system venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

system:
	bash scripts/install-system.sh

venv:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps .
	$(VENV)/bin/pip install --quiet --disable-pip-version-check '.[session,test]'
	# The local identity provider (npm oidc-provider); installs only when its lock changed.
	$(VENV)/bin/python -c 'from bioimage_gateway.devstack.idp import ensure_installed; ensure_installed()'
	# Compute nodes have no route to the internet: JupyterLab must not ask for news.
	install -D -m 0644 images/session/overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	# Server extensions of the session (activity, Dask sweep), enabled for every user.
	install -d $(VENV)/etc/jupyter/jupyter_server_config.d
	install -m 0644 images/session/jupyter_server_config.d/*.json $(VENV)/etc/jupyter/jupyter_server_config.d/
	# dask-labextension's "New cluster" uses the gateway's cluster factory.
	install -D -m 0644 images/session/dask.yaml $(VENV)/etc/dask/bioimage-gateway.yaml
	# The session's desktop (jupyter-remote-desktop-proxy): its xstartup runs openbox.
	install -D -m 0755 -t $(VENV)/share/bioimage-gateway/desktop images/session/desktop/xstartup
	chmod -R o+rX $(PREFIX)

benchmarks: system venv
	$(VENV)/bin/python benchmarks/spawn_latency.py

clean-demo:
	@test -n "$(STATE_DIR)" || { echo 'make clean-demo STATE_DIR=<the state directory the demo printed>'; exit 2; }
	$(VENV)/bin/bioimage-gateway devstack down --state-dir $(STATE_DIR)
