"""The iRODS stand-in itself, driven by the unmodified python-irodsclient over TCP."""

from __future__ import annotations

import socket

import irods.exception as ix
import pytest
from irods.access import iRODSAccess
from irods.column import Like
from irods.meta import iRODSMeta
from irods.models import Collection, DataObject, DataObjectMeta
from irods.session import iRODSSession
from irods_support import ZONE, client, home, start_standin, stop_standin

from bioimage_gateway.devstack.irods_standin import sha2


@pytest.fixture(scope="module")
def standin():
    s = start_standin()
    yield s
    stop_standin(s)


def test_avus_can_be_added_set_and_removed(standin):
    path = f"{home('alice')}/avus.txt"
    with client(standin, "alice") as s:
        obj = s.data_objects.create(path)
        obj.metadata.add("stain", "DAPI")
        obj.metadata.add("stain", "GFP")
        with pytest.raises(ix.CATALOG_ALREADY_HAS_ITEM_BY_THAT_NAME):
            obj.metadata.add("stain", "GFP")
        assert sorted(m.value for m in s.data_objects.get(path).metadata.get_all("stain")) == ["DAPI", "GFP"]
        obj.metadata.set("stain", "Hoechst", "nm")
        [avu] = s.data_objects.get(path).metadata.get_all("stain")
        assert (avu.value, avu.units) == ("Hoechst", "nm")
        obj.metadata.remove(iRODSMeta("stain", "Hoechst", "nm"))
        assert s.data_objects.get(path).metadata.items() == []


def test_genquery_conditions_ordering_and_paging(standin):
    cat = standin.catalogue()
    cat.seed_objects(f"{home('alice')}/q", "alice", ((f"f{i:03d}", bytes(i)) for i in range(600)),
                     metadata={"f007": [("organism", "Mus musculus", "")]})
    cat.close()
    with client(standin, "alice") as s:
        q = (s.query(DataObject.name, DataObject.size).filter(Collection.name == f"{home('alice')}/q")
             .order_by(DataObject.size, "desc"))
        batches = list(q.get_batches())
        assert [len(b) for b in batches] == [256, 256, 88]  # at most 256 rows a page, as iRODS
        assert [r[DataObject.size] for b in batches for r in b][:3] == [599, 598, 597]
        hits = s.query(DataObject.name).filter(DataObjectMeta.name == "organism",
                                                DataObjectMeta.value == "Mus musculus").all()
        assert [r[DataObject.name] for r in hits] == ["f007"]
        like = (s.query(DataObject.name).filter(Collection.name == f"{home('alice')}/q")
                .filter(Like(DataObject.name, "f59%")).all())
        assert sorted(r[DataObject.name] for r in like) == [f"f59{i}" for i in range(10)]
        count = s.query(DataObject.id).count(DataObject.id).filter(Collection.name == f"{home('alice')}/q").one()
        assert int(count[DataObject.id]) == 600


def test_owners_and_acls_are_enforced(standin):
    shared = f"{home('alice')}/lab-share"
    with client(standin, "alice") as alice, client(standin, "bob") as bob:
        alice.collections.create(shared)
        assert alice.collections.get(shared).owner_name == "alice"
        with pytest.raises(ix.CAT_NO_ACCESS_PERMISSION):
            bob.data_objects.create(f"{shared}/from-bob.txt")
        with pytest.raises(ix.CollectionDoesNotExist):  # strict policy: not even visible
            bob.collections.get(shared)
        alice.acls.set(iRODSAccess("write", shared, "bob", ZONE))
        obj = bob.data_objects.create(f"{shared}/from-bob.txt")
        assert obj.owner_name == "bob"
        with pytest.raises(ix.CAT_NO_ACCESS_PERMISSION):  # bob does not own alice's collection
            bob.acls.set(iRODSAccess("own", shared, "bob", ZONE))
        acl = {(a.user_name, a.access_name) for a in alice.acls.get(alice.collections.get(shared))}
        assert acl == {("alice", "own"), ("bob", "modify_object")}


def test_write_seek_read_and_checksum(standin):
    path = f"{home('alice')}/rw.bin"
    with client(standin, "alice") as s:
        with s.data_objects.open(path, "w") as f:
            f.write(b"0123456789")
        with s.data_objects.open(path, "r+") as f:
            f.seek(4)
            f.write(b"xy")
        with s.data_objects.open(path, "r") as f:
            f.seek(3)
            assert f.read(4) == b"3xy6"
        obj = s.data_objects.get(path)
        assert obj.size == 10 and not obj.checksum  # no checksum unless asked for
        assert obj.chksum() == sha2(b"0123xy6789")
        assert s.data_objects.get(path).checksum == sha2(b"0123xy6789")


def test_unlink_moves_to_trash_unless_forced(standin):
    with client(standin, "alice") as s:
        for name in ("a.txt", "b.txt"):
            with s.data_objects.open(f"{home('alice')}/{name}", "w") as f:
                f.write(b"bye")
        s.data_objects.unlink(f"{home('alice')}/a.txt")
        s.data_objects.unlink(f"{home('alice')}/b.txt", force=True)
        assert not s.data_objects.exists(f"{home('alice')}/a.txt")
        assert s.data_objects.exists(f"/{ZONE}/trash/home/alice/a.txt")
        assert not s.data_objects.exists(f"/{ZONE}/trash/home/alice/b.txt")
        with pytest.raises(ix.OBJ_PATH_DOES_NOT_EXIST):
            s.data_objects.open(f"{home('alice')}/b.txt", "r", create=False)


def test_older_servers_native_authentication_is_spoken_too():
    old = start_standin(release="rods4.2.12")
    try:
        with client(old, "bob") as s:
            assert s.server_version == (4, 2, 12)
            assert s.collections.get(home("bob")).owner_name == "bob"
        wrong = iRODSSession(host=old.host, port=old.port, user="bob", zone=ZONE, password="nope")
        with pytest.raises(ix.CAT_INVALID_AUTHENTICATION), wrong:
            wrong.collections.get(home("bob"))
        assert old.status()["by_api"]["AUTH_REQUEST_AN"] >= 2
    finally:
        stop_standin(old)


def test_stopped_by_pid_and_port_released():
    s = start_standin()
    port, pid = s.port, s.pid
    with client(s, "alice") as session:
        assert session.collections.get(home("alice")).name == "alice"
    stop_standin(s)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert s.pid is None and pid
