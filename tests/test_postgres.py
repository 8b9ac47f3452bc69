"""The hub on PostgreSQL: sessions, restarts and stops work as on SQLite."""

from __future__ import annotations

import pytest
from support import jobs_of, logged_in, start_hub

from bioimage_gateway.devstack.postgres import LocalPostgres

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "walltime_hours": "1"}


@pytest.fixture(scope="module")
def postgres(devstack):
    db = LocalPostgres(devstack.state_dir).start()
    yield db
    db.stop()


def test_sessions_on_a_postgresql_hub_survive_its_restart(devstack, postgres, slurm):
    hub = start_hub(devstack, "pg-hub", hub_changes={"db_url": postgres.url})
    try:
        bob = logged_in(hub.url, "bob")
        assert bob.submit_form(CPU).status_code == 302
        assert bob.progress()[-1].get("ready")
        job = jobs_of(slurm, "bob")
        # The hub's state is in PostgreSQL, not in a SQLite file.
        assert "bob" in postgres.psql("SELECT name FROM users", database="jupyterhub").split()
        assert not (devstack.state_dir / "pg-hub" / "jupyterhub.sqlite").exists()
        hub.stop()
        hub.start()
        bob = logged_in(hub.url, "bob")
        assert bob.server()["ready"]
        assert bob.open_lab().status_code == 200
        assert jobs_of(slurm, "bob") == job
        bob.stop()
        assert jobs_of(slurm, "bob") == []
    finally:
        hub.stop()
