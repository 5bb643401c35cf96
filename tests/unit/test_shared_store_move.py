"""
A master that kept its node records and swarm memory in ``localfs`` is given a shared store
(``cache: redis``, docs/multimaster.md): its records reach the store at the first access, one
the store already has is not overwritten, and the local banks are kept beside. A real
``redis-server`` on a Unix socket.
"""

import shutil
import subprocess
import time

import pytest
import salt.cache
import salt.config

from tools.salt_repo import load_module

NODES = load_module("utils", "dockerhosts_nodes")


@pytest.fixture
def store(tmp_path):
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed (bin/setup installs it)")
    socket = tmp_path / "redis.sock"
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(socket),
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not socket.exists():
            assert time.monotonic() < deadline and server.poll() is None, (
                "redis-server did not start"
            )
            time.sleep(0.1)
        yield socket
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_localfs_records_move_into_the_shared_store_once(tmp_path, store):
    local = {
        **salt.config.DEFAULT_MASTER_OPTS,
        "pki_dir": str(tmp_path / "pki"),
        "cachedir": str(tmp_path / "cache"),
        "cache": "localfs",
    }
    NODES.put(local, "db1", {"class": "dataserver", "key": "k1", "state": "converged"})
    NODES.put(local, "web1", {"class": "backends", "key": "k2", "state": "converged"})
    salt.cache.factory(local).store(NODES.SWARMS, "backends", {"cluster_id": "c1"})
    shared = {**local, "cache": "redis", "cache.redis.unix_socket_path": str(store)}
    salt.cache.factory(shared).store(NODES.BANK, "web1", {"class": "backends", "key": "newer"})

    assert NODES.names(shared) == ["db1", "web1"]
    assert NODES.get(shared, "db1")["class"] == "dataserver"
    assert NODES.get(shared, "web1")["key"] == "newer"  # the store's own record stands
    assert salt.cache.factory(shared).fetch(NODES.SWARMS, "backends") == {"cluster_id": "c1"}
    kept = sorted(p.name for p in (tmp_path / "pki" / "dockerhosts").iterdir())
    assert kept[0].startswith("nodes.moved-"), kept
    NODES.update(shared, "db1", state="failed")  # once: the moved bank is not read again
    assert NODES.get(shared, "db1")["state"] == "failed"
