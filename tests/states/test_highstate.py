"""
Highstate on a real master + minion + dockerd: bad pillar stops the run before any change;
the dataserver containers converge (checked with `docker inspect`), a second run changes
nothing, hand-made drift is repaired, `absent` removes; secrets are decrypted for the
container only, never in the mine, the state output, the repository or another class.

The tests in this module run in order and share one master, minion and dockerd.
"""

import json
import socket
import time

import pytest

pytestmark = pytest.mark.states


def apply(node, *args):
    started = time.monotonic()
    ret = node.cli.run("state.apply", *args, minion_tgt=node.minion.id, _timeout=240)
    return ret, time.monotonic() - started


def state_results(ret):
    assert isinstance(ret.data, dict), f"highstate did not run: {ret.stdout}{ret.stderr}"
    return ret.data


def failed(ret):
    return {
        key: value["comment"] for key, value in state_results(ret).items() if not value["result"]
    }


def changed(ret):
    return {v["__id__"]: v["changes"] for v in state_results(ret).values() if v["changes"]}


def state_seconds(ret):
    return sum(value["duration"] for value in state_results(ret).values()) / 1000


def timed_highstate(node, label):
    """A highstate that must succeed; its time, in all and in states, kept as ``label``."""
    ret, seconds = apply(node)
    node.helpers.timings[label] = seconds
    node.helpers.timings[f"{label}, in states"] = state_seconds(ret)
    assert ret.returncode == 0, ret.stdout
    assert failed(ret) == {}
    return ret


def env_of(container):
    return dict(item.split("=", 1) for item in container["Config"]["Env"])


# --- bad pillar: the run fails before anything changes, naming the key --------------------


# Bad pillar: tests/states/test_bad_pillars.py runs the corpus through this node.


# --- converge --------------------------------------------------------------------------------


def test_first_highstate_runs_the_dataserver_containers(node):
    timed_highstate(node, "first")

    postgres = node.dockerd.inspect("postgres")
    assert postgres["State"]["Running"]
    env = env_of(postgres)
    assert env["POSTGRES_USER"] == node.secrets["postgres_user"]
    assert env["POSTGRES_PASSWORD"] == node.secrets["postgres_password"]
    assert env["POSTGRES_DB"] == node.secrets["postgres_db"]
    assert postgres["HostConfig"]["VolumesFrom"] == ["pg_data"]
    assert postgres["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert postgres["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "1m", "max-file": "2"},
    }
    assert "backend" in postgres["NetworkSettings"]["Networks"]
    assert postgres["HostConfig"]["PortBindings"]["5432/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": "15432"}
    ]
    assert postgres["Config"]["Labels"]["class"] == "dataserver"

    pg_data = node.dockerd.inspect("pg_data")
    assert not pg_data["State"]["Running"]
    assert [mount["Destination"] for mount in pg_data["Mounts"]] == ["/var/lib/postgresql"]
    # volumes_from shares pg_data's volume with postgres.
    assert [mount["Name"] for mount in postgres["Mounts"]] == [
        mount["Name"] for mount in pg_data["Mounts"]
    ]

    # The published port really answers (docker-proxy on 127.0.0.1).
    with socket.create_connection(("127.0.0.1", 15432), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert conn.recv(64).startswith(b"HTTP/1.")

    daemon_json = json.loads(node.paths["daemon_json"].read_text())
    assert daemon_json["log-driver"] == "json-file"
    assert "storage-driver" not in daemon_json  # storage mode none in the test pillar


def test_second_highstate_changes_nothing(node):
    ret = timed_highstate(node, "second")
    assert changed(ret) == {}


def test_stopped_container_is_started_again(node):
    node.dockerd.cli("stop", "postgres")
    ret, _ = apply(node)
    assert ret.returncode == 0, ret.stdout
    assert set(changed(ret)) == {"docker-container-postgres"}
    assert node.dockerd.inspect("postgres")["State"]["Running"]


def test_removed_container_is_recreated(node):
    node.dockerd.cli("rm", "-f", "postgres")
    ret, _ = apply(node)
    assert ret.returncode == 0, ret.stdout
    postgres = node.dockerd.inspect("postgres")
    assert postgres["State"]["Running"]
    assert env_of(postgres)["POSTGRES_PASSWORD"] == node.secrets["postgres_password"]
    assert postgres["HostConfig"]["VolumesFrom"] == ["pg_data"]


def test_container_moved_to_absent_is_removed(node):
    legacy = {"image": "busybox:latest", "command": ["httpd", "-f", "-p", "8080"]}
    add = {"docker": {"containers": {"legacy": legacy}}}
    ret, _ = apply(node, f"pillar={json.dumps(add)}")
    assert ret.returncode == 0, ret.stdout
    assert "legacy" in node.dockerd.container_names()

    drop = {"docker": {"absent": ["legacy"]}}
    ret, _ = apply(node, f"pillar={json.dumps(drop)}")
    assert ret.returncode == 0, ret.stdout
    assert "docker-container-absent-legacy" in changed(ret)
    assert node.dockerd.container_names() == ["pg_data", "postgres"]


# --- secrets ---------------------------------------------------------------------------------


def test_secrets_never_in_state_output(node):
    # Force the container to be replaced so its env is in the diff Salt reports.
    node.dockerd.cli("rm", "-f", "postgres")
    node.dockerd.cli(
        "create", "--name", "postgres", "-e", "POSTGRES_PASSWORD=old", "postgres:16", "true"
    )
    ret, _ = apply(node)
    assert ret.returncode == 0, ret.stdout
    assert "docker-container-postgres" in changed(ret)
    output = ret.stdout + json.dumps(ret.data)
    for name in ("postgres_password", "registry_password"):
        assert node.secrets[name] not in output


def mine_docker_ps(node):
    ret = node.cli.run("mine.get", node.minion.id, "docker.ps", minion_tgt=node.minion.id)
    assert ret.returncode == 0
    return ret


def test_secrets_never_in_the_mine(node):
    ret = mine_docker_ps(node)
    assert not ret.data
    assert node.secrets["postgres_password"] not in ret.stdout


def test_secrets_never_in_repository_files(repo_root, node):
    skip = {".git", ".venv", ".venv-salt3007", "__pycache__", ".ruff_cache", ".pytest_cache"}
    leaks = []
    for path in repo_root.rglob("*"):
        if skip & set(path.relative_to(repo_root).parts) or not path.is_file():
            continue
        data = path.read_bytes()
        leaks += [
            str(path) for name in node.helpers.secret_names if node.secrets[name].encode() in data
        ]
    assert leaks == []


def test_other_class_gets_no_secrets(node, other_minion):
    ret = node.cli.run("pillar.items", minion_tgt=other_minion.id)
    assert ret.returncode == 0
    assert "docker_secrets" not in ret.data
    assert "containers" not in ret.data.get("docker", {}) or not ret.data["docker"]["containers"]
    assert node.secrets["postgres_password"] not in ret.stdout


@pytest.fixture
def restore_secrets(pillar_root, gpg_home, node):
    secrets = pillar_root / "classes" / "dataserver" / "secrets.sls"
    yield secrets
    node.helpers.write_secrets(secrets, gpg_home["public"], node.secrets)
    node.cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=node.minion.id)


def _assert_apply_refused_and_nothing_changed(node):
    before = node.dockerd.inspect("postgres")["Id"]
    node.cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=node.minion.id)
    ret, _ = apply(node)
    assert ret.returncode != 0
    assert "Rendering SLS 'classes.dataserver.secrets' failed" in ret.stdout
    assert node.dockerd.inspect("postgres")["Id"] == before


def test_corrupt_ciphertext_stops_state_apply(node, restore_secrets):
    text = restore_secrets.read_text().splitlines()
    # Flip a character inside the first armored body line.
    index = next(i for i, line in enumerate(text) if line.strip().startswith("hQ"))
    line = text[index]
    middle = len(line) // 2
    text[index] = line[:middle] + ("A" if line[middle] != "A" else "B") + line[middle + 1 :]
    restore_secrets.write_text("\n".join(text) + "\n")
    _assert_apply_refused_and_nothing_changed(node)


def test_secret_for_another_key_stops_state_apply(node, restore_secrets, tmp_path):
    with node.helpers.keyring(tmp_path / "other-gpg", name="not-the-master") as other:
        node.helpers.write_secrets(restore_secrets, other["public"], node.secrets)
    _assert_apply_refused_and_nothing_changed(node)


def test_storage_without_a_disk_stops_before_docker(node):
    """No docker_volume grain and no docker:storage:docker_volume: the disk gate fails when it
    runs, and nothing that needs storage (daemon.json, containers) is touched."""
    before = (node.dockerd.cli("ps", "-aq", "--no-trunc"), node.paths["daemon_json"].read_text())
    override = {"docker": {"storage": {"mode": "overlay2"}}}
    ret, _ = apply(node, f"pillar={json.dumps(override)}")
    assert ret.returncode != 0
    assert "grain docker_volume is missing" in ret.stdout
    assert failed(ret)["docker_storage_|-docker-storage-disk_|-docker_vol_|-disk_checked"]
    after = (node.dockerd.cli("ps", "-aq", "--no-trunc"), node.paths["daemon_json"].read_text())
    assert after == before
