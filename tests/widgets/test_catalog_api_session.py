"""The catalog API in a real session (a Slurm job behind the hub): its owner gets the listing,
another user's token or cookies do not."""

from __future__ import annotations

from bioimage_gateway.catalogs.posix import PosixCatalog


def test_only_the_owner_reaches_the_catalog_api(devstack, alice, bob):
    samples = devstack.record()["data_services"]["samples"]
    folder = PosixCatalog.url(samples[0].rsplit("/", 1)[0])
    response = alice.submit_form({"profile": "cpu", "cpus": "1", "memory_gb": "1", "gpus": "0",
                                  "walltime_hours": "1"})
    assert response.status_code == 302, response.text[-2000:]
    try:
        alice.wait_ready()
        assert alice.open_lab().status_code == 200  # the OAuth dance: alice's cookie for her server
        api = alice.url("/user/alice/bioimage-gateway/catalog")
        reply = alice.http.get(api, params={"url": folder, "limit": 2}, timeout=60)
        assert reply.status_code == 200, reply.text[-2000:]
        body = reply.json()
        assert [e["kind"] for e in body["entries"]] == ["image", "image"] and body["more"] is True
        staging = alice.http.get(alice.url("/user/alice/bioimage-gateway/staging"), timeout=60)
        assert staging.status_code == 200 and "jobs" in staging.json()

        # bob: his own API token, then his browser cookies
        token = bob.new_token()
        refused = bob.http.get(api, params={"url": folder}, timeout=60, allow_redirects=False,
                               headers={"Authorization": f"token {token}"})
        assert refused.status_code == 403, refused.status_code
        with_cookies = bob.http.get(api, params={"url": folder}, timeout=60)
        assert with_cookies.status_code == 403, (with_cookies.status_code, with_cookies.url)
        assert "entries" not in with_cookies.text
    finally:
        alice.stop()
