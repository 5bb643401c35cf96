"""
bin/add-master as an operator pipes it (export on one master, import on the joining one):
what is copied and with which modes, a second run, new keys only, and the refusals that change
nothing. The multimaster tier provisions its second master with it too.
"""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "bin" / "add-master"
ENV = {**os.environ, "SALT_BIN_DIR": str(Path(sys.executable).parent)}


def master(root, name):
    home = root / name
    (home / "pki" / "minions").mkdir(parents=True)
    (home / "master").write_text(f"pki_dir: {home}/pki\ngpg_keydir: {home}/gpg\n")
    return home


def pipe(source, joining, *options):
    exported = subprocess.run(
        [TOOL, "--export", *options, "-c", source], capture_output=True, check=True, env=ENV
    )
    return subprocess.run(
        [TOOL, "--import", "-c", joining],
        input=exported.stdout,
        capture_output=True,
        check=False,
        env=ENV,
    )


@pytest.fixture
def masters(tmp_path):
    first, second = master(tmp_path, "m1"), master(tmp_path, "m2")
    (first / "pki" / "master.pem").write_text("private")
    (first / "pki" / "master.pem").chmod(0o400)
    (first / "pki" / "master.pub").write_text("public")
    (first / "pki" / "minions" / "n01").write_text("n01 key")
    (first / "gpg").mkdir(mode=0o700)
    (first / "gpg" / "secring.gpg").write_text("gpg private")
    return first, second


def test_the_joining_master_gets_the_keys_privately_and_again_is_a_no_op(masters):
    first, second = masters
    assert pipe(first, second).returncode == 0
    for path in ("pki/master.pem", "pki/master.pub", "pki/minions/n01", "gpg/secring.gpg"):
        assert (second / path).read_bytes() == (first / path).read_bytes(), path
        assert stat.S_IMODE((second / path).stat().st_mode) & 0o077 == 0, path
    assert stat.S_IMODE((second / "pki" / "master.pem").stat().st_mode) == 0o400
    again = pipe(first, second)
    assert again.returncode == 0 and b"0 file(s) added" in again.stdout


def test_keys_only_adds_the_new_minion_keys(masters):
    first, second = masters
    pipe(first, second)
    (first / "pki" / "minions" / "n02").write_text("n02 key")
    assert pipe(first, second, "--keys-only").returncode == 0
    assert (second / "pki" / "minions" / "n02").read_text() == "n02 key"


def test_other_keys_on_the_joining_master_are_refused_and_nothing_changes(masters):
    first, second = masters
    (second / "pki" / "master.pem").write_text("another master")
    refused = pipe(first, second)
    assert refused.returncode == 1
    assert refused.stderr.decode().count("\n") == 1  # one line, no traceback
    assert f"{second}/pki/master.pem" in refused.stderr.decode()
    assert not (second / "pki" / "minions" / "n01").exists()


def test_import_without_a_stream_says_so(masters):
    _, second = masters
    refused = subprocess.run(
        [TOOL, "--import", "-c", second], input=b"", capture_output=True, check=False, env=ENV
    )
    assert refused.returncode == 1
    assert refused.stderr.decode().startswith("add-master: no export stream on stdin")
