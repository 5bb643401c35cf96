"""bin/encrypt-secret as the README uses it: its output pasted under `docker_secrets:` is a pillar
entry that Salt's own `yaml|gpg` renderer decrypts to the value (the newcomer path)."""

import subprocess

import pytest
import salt.config
import salt.loader
import salt.template

from tools import gpg

ENCRYPT = gpg.REPO_ROOT / "bin" / "encrypt-secret"


@pytest.fixture(scope="module")
def master_key(tmp_path_factory):
    with gpg.keyring(tmp_path_factory.mktemp("gpg"), "unit-master") as keys:
        yield keys


def run(*args, value="s3cret value"):
    return subprocess.run(
        [str(ENCRYPT), *map(str, args)], input=value, capture_output=True, text=True, check=False
    )


def render(text, gpg_home):
    opts = salt.config.minion_config(None)
    opts.update({"gpg_keydir": str(gpg_home), "file_client": "local"})
    renderers = salt.loader.render(opts, {})
    return salt.template.compile_template_str(text, renderers, "yaml", [], [])


def test_pasted_under_docker_secrets_it_renders_to_the_value(master_key):
    first = run("postgres_password", master_key["public"])
    second = run("postgres_user", master_key["public"], value="pg")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "s3cret" not in first.stdout
    # What the README says: paste each printed block under `docker_secrets:`.
    secrets_file = "#!yaml|gpg\ndocker_secrets:\n" + first.stdout + second.stdout
    pillar = render(secrets_file, master_key["home"])
    assert pillar == {
        "docker_secrets": {"postgres_password": "s3cret value", "postgres_user": "pg"}
    }


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "usage: printf"),
        (("bad name",), "is not a secret name"),
        (("-x",), "is not a secret name"),
        (("name", "/nonexistent.asc"), "no public key at /nonexistent.asc"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
