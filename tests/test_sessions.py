"""Sessions as Slurm jobs, end to end on the real local Slurm and hub."""

from __future__ import annotations

from support import jobs_of


def test_spawn_lab_through_proxy_then_stop(alice, slurm):
    form = alice.spawn_form()
    assert form.status_code == 200
    assert 'value="cpu"' in form.text and 'value="large-memory"' in form.text
    # A profile of another group is not offered.
    assert 'value="workshop"' not in form.text

    response = alice.submit_form({"profile": "cpu", "cpus": "1", "memory_gb": "1",
                                  "gpus": "0", "walltime_hours": "1"})
    assert response.status_code == 302, response.text[-2000:]
    events = alice.progress()
    messages = [e.get("message", "") for e in events]
    assert any("Slurm job" in m for m in messages), messages
    assert events[-1].get("ready"), events[-1]
    jobs = jobs_of(slurm, "alice")
    assert len(jobs) == 1

    lab = alice.open_lab()
    assert lab.status_code == 200
    assert "JupyterLab" in lab.text and f"/user/alice/" in lab.url

    alice.stop()
    assert jobs_of(slurm, "alice") == []
