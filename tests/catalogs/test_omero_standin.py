"""The OMERO.web stand-in at the HTTP level: the documented response shapes, CSRF, sessions, paging,
permissions, stopping by PID."""

from __future__ import annotations

import requests
from omero_support import MANY, OMERO_USERS, start_omero, stop_omero

OME = "http://www.openmicroscopy.org/Schemas/OME/2016-06#"


def login(omero, user="alice") -> requests.Session:
    s = requests.Session()
    token = s.get(f"{omero.url}/api/v0/token/").json()["data"]
    r = s.post(f"{omero.url}/api/v0/login/", data={"username": user, "password": OMERO_USERS[user], "server": 1},
               headers={"X-CSRFToken": token})
    assert r.status_code == 200, r.text
    return s


def test_discovery_urls_and_servers(omero):
    versions = requests.get(f"{omero.url}/api/").json()
    assert versions == {"data": [{"version": "0", "url:base": f"{omero.url}/api/v0/"}]}
    base = requests.get(f"{omero.url}/api/v0/")
    assert base.headers["X-OMERO-ApiVersion"] == "0.2"
    links = base.json()
    for name in ("projects", "datasets", "images", "screens", "plates"):
        assert links[f"url:{name}"] == f"{omero.url}/api/v0/m/{name}/"
    assert links["url:login"] == f"{omero.url}/api/v0/login/"
    assert links["url:token"] == f"{omero.url}/api/v0/token/"
    servers = requests.get(f"{omero.url}/api/v0/servers/").json()["data"]
    assert servers == [{"id": 1, "host": "localhost", "port": 4064, "server": "omero"}]


def test_login_needs_the_csrf_token_and_gives_an_event_context(omero):
    s = requests.Session()
    form = {"username": "alice", "password": OMERO_USERS["alice"], "server": 1}
    refused = s.post(f"{omero.url}/api/v0/login/", data=form)
    assert refused.status_code == 403 and "CSRF verification failed" in refused.text
    assert s.get(f"{omero.url}/api/v0/login/").status_code == 405
    token = s.get(f"{omero.url}/api/v0/token/").json()["data"]
    assert s.cookies["csrftoken"] == token
    wrong = s.post(f"{omero.url}/api/v0/login/", data={**form, "password": "x"}, headers={"X-CSRFToken": token})
    assert wrong.status_code == 403
    assert wrong.json() == {"message": "Connection not available, please check your user name and password."}
    ok = s.post(f"{omero.url}/api/v0/login/", data=form, headers={"X-CSRFToken": token})
    body = ok.json()
    assert body["success"] is True and "sessionid" in s.cookies
    ctx = body["eventContext"]
    assert ctx["userName"] == "alice" and ctx["groupName"] == "lab" and len(ctx["sessionUuid"]) == 36


def test_not_logged_in_is_403_on_the_api_and_a_redirect_elsewhere(omero):
    r = requests.get(f"{omero.url}/api/v0/m/projects/")
    assert r.status_code == 403 and r.json() == {"message": "Not logged in"}
    image = omero.ids["embryo1"]
    for path in (f"/webclient/api/annotations/?type=map&image={image}", f"/webgateway/render_thumbnail/{image}/",
                 f"/zarr/v0.4/image/{image}.zarr/.zattrs"):
        r = requests.get(omero.url + path, allow_redirects=False)
        assert r.status_code == 302 and r.headers["Location"].startswith("/webclient/login/")


def test_lists_have_documented_shapes_and_meta_paging(omero):
    s = login(omero)
    ds = omero.ids["many"]
    page = s.get(f"{omero.url}/api/v0/m/datasets/{ds}/images/", params={"offset": 400, "limit": 1000}).json()
    assert page["meta"] == {"offset": 400, "limit": 500, "maxLimit": 500, "totalCount": MANY}
    assert len(page["data"]) == MANY - 400
    image = page["data"][0]
    assert image["@type"] == OME + "Image" and image["Name"] == "img-0400"
    assert image["url:image"] == f"{omero.url}/api/v0/m/images/{image['@id']}/"
    details = image["omero:details"]
    assert details["owner"]["UserName"] == "alice" and details["owner"]["@type"] == OME + "Experimenter"
    assert details["group"]["Name"] == "lab" and details["permissions"]["perm"] == "rwr---"
    assert s.get(f"{omero.url}/api/v0/m/images/", params={"limit": "x"}).status_code == 400
    projects = s.get(f"{omero.url}/api/v0/m/projects/", params={"childCount": "true"}).json()
    assert projects["meta"]["limit"] == 200
    counts = {p["Name"]: p["omero:childCount"] for p in projects["data"]}
    assert counts == {"Big": 1, "Bob shared": 1, "Embryo study": 2}
    single = s.get(f"{omero.url}/api/v0/m/images/{omero.ids['embryo1']}/").json()["data"]
    assert single["Pixels"]["SizeC"] == 2 and len(single["Pixels"]["Channels"]) == 2


def test_map_annotations_through_the_webclient_endpoint(omero):
    s = login(omero)
    ids = [omero.ids["embryo1"], omero.ids["cells"], omero.ids["bob_private"]]
    body = s.get(f"{omero.url}/webclient/api/annotations/", params={"type": "map", "image": ids}).json()
    parents = {a["link"]["parent"]["id"] for a in body["annotations"]}
    assert parents == {omero.ids["embryo1"], omero.ids["cells"]}  # not bob's private image
    ann = body["annotations"][0]
    assert ann["class"] == "MapAnnotationI" and ann["ns"] == "openmicroscopy.org/omero/client/mapAnnotation"
    assert ["organism", "Mus musculus"] in ann["values"]
    assert {e["omeName"] for e in body["experimenters"]} == {"alice"}


def test_permissions_private_group_and_non_member_group(omero):
    alice, bob = login(omero, "alice"), login(omero, "bob")
    private = f"{omero.url}/api/v0/m/images/{omero.ids['bob_private']}/"
    assert alice.get(private).status_code == 404
    assert alice.get(private).json() == {"message": f"Image {omero.ids['bob_private']} not found"}
    assert bob.get(private).status_code == 200
    other = alice.get(f"{omero.url}/api/v0/m/projects/", params={"group": omero.ids["bob_only_group"]})
    assert other.status_code == 403 and "SecurityViolation" in other.json()["message"]


def test_joining_an_omero_session_with_bsession(omero):
    seeded = omero.store()
    uuid = seeded.create_session("alice")
    seeded.close()
    s = requests.Session()
    r = s.get(f"{omero.url}/api/v0/m/projects/", params={"bsession": uuid})
    assert r.status_code == 200 and "sessionid" in s.cookies
    assert s.get(f"{omero.url}/api/v0/m/projects/").status_code == 200  # the cookie now suffices
    assert requests.get(f"{omero.url}/api/v0/m/projects/", params={"bsession": "nope"}).status_code == 403


def test_stand_in_stops_by_pid_and_drop_option_closes_connections():
    standin = start_omero(drop_after=0, drop_times=1)
    try:
        s = requests.Session()
        try:
            s.get(f"{standin.url}/api/v0/m/projects/")
            dropped = False
        except requests.ConnectionError:
            dropped = True
        assert dropped and standin.status()["drops"] == 1
        assert s.get(f"{standin.url}/api/v0/m/projects/").status_code == 403  # answered again
    finally:
        stop_omero(standin)
    assert not standin.running
