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
    assert "JupyterLab" in lab.text and "/user/alice/" in lab.url
    # The session knows its job and when its walltime (1 h) ends.
    info = alice.http.get(alice.url("/user/alice/bioimage-gateway/session"), timeout=30).json()
    assert info["job_id"] == jobs[0]
    assert 3300 < info["seconds_left"] <= 3600
    # The lab loads the gateway's extension.
    assert "bioimage-gateway-lab" in lab.text

    alice.stop()
    assert jobs_of(slurm, "alice") == []
