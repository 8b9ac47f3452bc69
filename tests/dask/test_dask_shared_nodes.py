"""Dask on shared nodes: another user on the node where alice's kernel and scheduler run (or
where her workers run) reaches nothing of her cluster; her own client and workers work; her
per-user paths are hers alone, and one that someone else made is refused, naming it."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import stat
from pathlib import Path

import pytest
from support_dask import DASK_SETTINGS, UserPython, jobs_named, run_python_as, tcp_listeners

from bioimage_gateway.devstack.processes import run

pytestmark = pytest.mark.slurm

ALICE = pwd.getpwnam("alice")

# Bob's tries, on the node: TLS without a certificate and with a certificate of his own (in
# TLS 1.2 the server's verdict comes in the handshake; in TLS 1.3 right after it), Dask's
# client over plain TCP and over TLS with his own credentials.
BOB_CONNECTS = r'''
import json, os, socket, ssl, sys, tempfile
from distributed import Client
from distributed.security import Security
host, port = sys.argv[1], int(sys.argv[2])
out = {}

class HandshakeRefused(Exception):
    pass

def attempt(name, fn):
    try:
        out[name] = "answered: " + repr(fn())
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"

def own_certificate():
    pems, folder = Security.temporary(), tempfile.mkdtemp()
    for name, text in (("cert", pems.tls_client_cert), ("key", pems.tls_client_key)):
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    return os.path.join(folder, "cert"), os.path.join(folder, "key")

def tls(version, certificate=None):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.maximum_version = version
    if certificate:
        context.load_cert_chain(*certificate)
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, do_handshake_on_connect=False) as wrapped:
            try:
                wrapped.do_handshake()
            except ssl.SSLError as exc:
                raise HandshakeRefused(exc) from None
            wrapped.sendall(b"\0")
            return wrapped.recv(16)

mine = own_certificate()
attempt("tls12_without_certificate", lambda: tls(ssl.TLSVersion.TLSv1_2))
attempt("tls12_with_own_certificate", lambda: tls(ssl.TLSVersion.TLSv1_2, mine))
attempt("tls13_without_certificate", lambda: tls(ssl.TLSVersion.TLSv1_3))
attempt("tls13_with_own_certificate", lambda: tls(ssl.TLSVersion.TLSv1_3, mine))
attempt("dask_plain_tcp", lambda: Client(f"tcp://{host}:{port}", timeout=10).scheduler_info())
attempt("dask_tls_own_credentials",
        lambda: Client(f"tls://{host}:{port}", security=Security.temporary(), timeout=10)
        .scheduler_info())
print(json.dumps(out))
'''

# An HTTP request to each (host, port): what came back, if anything.
HTTP_TRIES = r'''
import json, socket, sys
out = {}
for host, port in json.loads(sys.argv[1]):
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.settimeout(10)
            s.sendall(b"GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        out[f"{host}:{port}"] = data[:200].decode(errors="replace")
    except OSError as exc:
        out[f"{host}:{port}"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
'''

# GET /status over a Unix socket.
SOCKET_GET = r'''
import json, socket, sys
try:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(sys.argv[1])
        s.sendall(b"GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    print(json.dumps({"answer": data[:20000].decode(errors="replace")}))
except OSError as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
'''

START = ("from bioimage_gateway.dask_clusters import new_cluster\n"
         "cluster = new_cluster(workers=1, job_extra_directives=['--nodelist={node}'])\n"
         "cluster.wait_for_workers(1, timeout=90)\n")


@pytest.fixture
def kernel_on_node1(devstack, alice_env):
    """A kernel of alice's on node1 (as a session's kernel runs beside its server)."""
    python = UserPython("alice", alice_env, node=devstack.node("node1"))
    yield python
    python.close()


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_another_user_on_the_node_cannot_connect_to_the_cluster(devstack, kernel_on_node1):
    kernel = kernel_on_node1
    kernel(START.format(node="node2"))
    address = kernel("result = cluster.scheduler_address")
    assert address.startswith("tls://10."), address  # TLS, on node1's own address
    host, port = address[len("tls://"):].rsplit(":", 1)

    # Alice's own client in the kernel, and her worker on the other node, work as before.
    done = kernel("import socket\nclient = cluster.get_client()\n"
                  "result = [client.submit(sum, [1, 2, 3]).result(), "
                  "sorted(client.run(socket.gethostname).values())]")
    assert done == [6, ["node2"]]

    # Bob, on node1 beside her scheduler, gets nowhere.
    tries = run_python_as("bob", BOB_CONNECTS, host, port, node=devstack.node("node1"))
    print(json.dumps(tries, indent=1))
    for name in ("tls12_without_certificate", "tls12_with_own_certificate"):
        assert tries[name].startswith("HandshakeRefused: "), (name, tries[name])
    for name in ("tls13_without_certificate", "tls13_with_own_certificate"):
        # Refused once the server has seen the (missing or foreign) certificate.
        assert tries[name].startswith(("SSLError", "SSLEOFError", "ConnectionResetError")), \
            (name, tries[name])
    for name in ("dask_plain_tcp", "dask_tls_own_credentials"):
        assert not tries[name].startswith("answered"), (name, tries[name])

    # The credentials: the cluster's own, 0600 in a 0700 folder of hers that bob cannot read.
    folder = kernel("result = str(cluster.credentials.directory)")
    assert folder.startswith(ALICE.pw_dir + "/")
    assert _mode(folder) == 0o700 and os.lstat(folder).st_uid == ALICE.pw_uid
    files = sorted(os.listdir(folder))
    assert {"tls.crt", "tls.key"} <= set(files), files
    for name in ("tls.crt", "tls.key"):
        path = f"{folder}/{name}"
        assert _mode(path) == 0o600 and os.lstat(path).st_uid == ALICE.pw_uid
    read = run(["sudo", "-n", "-u", "bob", "cat", f"{folder}/tls.key"], check=False)
    assert read.returncode != 0 and "Permission denied" in read.stderr
    # The scheduler's scratch folder, which goes on the kernel's sys.path, is in there too,
    # not in the node's shared /tmp/dask-scratch-space that bob could have made.
    scratch = kernel("import sys\nresult = [cluster.scheduler.local_directory, sys.path]")
    assert scratch[0].startswith(folder + "/dask-scratch-space/"), scratch[0]
    assert not [entry for entry in scratch[1] if "dask-scratch-space" in entry
                and not entry.startswith(folder + "/")], scratch[1]

    kernel("client.close(); cluster.close()")
    assert not os.path.lexists(folder)  # the key goes with the cluster


def test_nothing_of_the_cluster_answers_http_on_a_node_but_its_socket(devstack, kernel_on_node1):
    """The scheduler's dashboard and HTTP routes, and the workers' HTTP routes, are on Unix
    sockets in alice's private folders: on neither node does any TCP port of hers answer bob
    in HTTP; the dashboard's socket answers alice and refuses bob."""
    kernel = kernel_on_node1
    kernel(START.format(node="node2"))
    # The cluster's processes: the kernel (its scheduler) on node1, worker and nanny on node2.
    workers = kernel("import os\nresult = list(cluster.get_client().run("
                     "lambda: [os.getpid(), os.getppid()]).values())")
    for name, pids in (("node1", {kernel.pid}), ("node2", set(workers[0]))):
        node = devstack.node(name)
        ports = tcp_listeners(node, pids)
        assert ports, f"no TCP listener of the cluster's on {name}"
        answers = run_python_as("bob", HTTP_TRIES, json.dumps(ports), node=node)
        print(name, answers)
        for where, answer in answers.items():
            assert not answer.startswith("HTTP/"), (name, where, answer)

    node1 = devstack.node("node1")
    sock = kernel("result = cluster.dashboard_socket")
    hers = run_python_as("alice", SOCKET_GET, sock, node=node1)
    assert hers.get("answer", "").startswith("HTTP/1.1 200"), hers
    assert "Dask" in hers["answer"]
    theirs = run_python_as("bob", SOCKET_GET, sock, node=node1)
    assert theirs == {"error": "PermissionError: [Errno 13] Permission denied"}, theirs
    kernel("cluster.close()")


def _settings(**changes) -> str:
    """Code that makes `settings`: the tests' dask section with ``changes``."""
    return ("from bioimage_gateway.dask_settings import DaskSettings\n"
            f"settings = DaskSettings.model_validate({ {**DASK_SETTINGS, **changes}!r})\n")


@pytest.mark.parametrize("planted", ["folder", "link"])
def test_a_spill_folder_someone_else_made_is_refused(devstack, kernel_on_node1, alice_env,
                                                     planted):
    """Bob makes the spill folder alice's workers on node2 will use (or a link there to a
    folder of his): her cluster refuses it, naming it and its owner, and nothing of hers ends
    up in his folder."""
    tag = secrets.token_hex(4)
    spill = f"/tmp/dask-{tag}-alice"
    bobs = f"/tmp/bob-{tag}"
    node2 = devstack.node("node2")
    as_bob = ["sudo", "-n", "-u", "bob", "--"]
    try:
        if planted == "folder":
            run(node2.argv([*as_bob, "mkdir", "-m", "0777", spill]))
        else:
            run(node2.argv([*as_bob, "mkdir", "-m", "0777", bobs]))
            run(node2.argv([*as_bob, "ln", "-s", bobs, spill]))
        answer = kernel_on_node1.run(
            _settings(local_directory="/tmp/dask-" + tag + "-{user}")
            + "from bioimage_gateway.dask_clusters import new_cluster\n"
            "cluster = new_cluster(workers=1, settings=settings, groups=['imaging'], "
            "job_extra_directives=['--nodelist=node2'])\n"
            "cluster.wait_for_workers(1, timeout=90)", check=False)
        assert answer.get("type") == "PrivatePathError", answer
        message = answer["error"]
        print(message)
        assert f"refused to start on node2: Dask spill directory {spill} refused: it " in message
        if planted == "folder":
            assert "it belongs to bob, not to alice" in message, message
        else:
            assert f"it is a symbolic link (to {bobs}) of bob's" in message, message
        described = kernel_on_node1("result = cluster.slurm_status().describe()")
        assert "refused to start on node2" in described and "bob" in described
        kernel_on_node1("cluster.close()")
        assert os.listdir(bobs if planted == "link" else spill) == []  # nothing of alice's
    finally:
        run(["rm", "-rf", spill, bobs], check=False)


@pytest.mark.parametrize("planted", ["folder", "link"])
def test_a_credentials_folder_someone_else_owns_is_refused_before_any_job(
    devstack, alice_env, as_alice, planted
):
    """The folder of alice's cluster credentials exists and is bob's (or a link): her cluster
    refuses it, naming it and its owner, before Slurm sees a job."""
    tag = secrets.token_hex(4)
    relative = f".bioimage-gateway/dask-{tag}"
    path = Path(ALICE.pw_dir) / relative
    bobs = Path(f"/tmp/bob-{tag}")
    try:
        path.parent.mkdir(exist_ok=True)
        if planted == "folder":
            path.mkdir(mode=0o700)
            shutil.chown(path, "bob", "bob")
        else:
            bobs.mkdir(mode=0o777)
            shutil.chown(bobs, "bob", "bob")
            path.symlink_to(bobs)
            os.lchown(path, pwd.getpwnam("bob").pw_uid, pwd.getpwnam("bob").pw_gid)
        answer = as_alice.run(
            _settings(runtime_directory=relative)
            + "from bioimage_gateway.dask_clusters import new_cluster\n"
            "cluster = new_cluster(workers=1, settings=settings, groups=['imaging'])", check=False)
        assert answer.get("type") == "PrivatePathError", answer
        why = "belongs to bob, not to alice" if planted == "folder" else \
            f"is a symbolic link (to {bobs}) of bob's"
        assert f"Dask credentials directory {path} refused: it {why}" in answer["error"], answer

        assert jobs_named(alice_env, "alice") == []
        assert os.listdir(bobs if planted == "link" else path) == []
    finally:
        if path.is_symlink():
            path.unlink()
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(bobs, ignore_errors=True)
