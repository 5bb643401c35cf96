"""Throwaway GPG keys for encrypted pillar: a keyring a test or demo master uses as its
gpg_keydir, and values encrypted for it exactly as bin/encrypt-secret does (public key file +
stdin)."""

import contextlib
import subprocess
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_key(homedir, name="test-master"):
    """Create a passphrase-less key pair in ``homedir``; returns its exported public key file."""
    homedir = Path(homedir)
    homedir.mkdir(mode=0o700, parents=True, exist_ok=True)
    gpg = ["gpg", "--homedir", str(homedir), "--batch"]
    no_passphrase = ["--passphrase", "", "--pinentry-mode", "loopback"]
    user_id = f"{name} <{name}@test.invalid>"
    subprocess.run(
        [*gpg, *no_passphrase, "--quick-gen-key", user_id, "default", "default", "never"],
        capture_output=True,
        check=True,
    )
    public = homedir / "public.asc"
    public.write_bytes(
        subprocess.run([*gpg, "--armor", "--export"], capture_output=True, check=True).stdout
    )
    return public


@contextlib.contextmanager
def keyring(homedir, name="test-master"):
    """A key pair made in ``homedir`` (``make_key``), its agent stopped afterwards:
    ``{"home": homedir, "public": its public key file}``."""
    public = make_key(homedir, name)
    try:
        yield {"home": Path(homedir), "public": public}
    finally:
        stop_agent(homedir)


def encrypt(public_key, value, name="secret"):
    """The ``docker_secrets:`` entry bin/encrypt-secret prints for ``name: value``."""
    return subprocess.run(
        [str(REPO_ROOT / "bin" / "encrypt-secret"), name, str(public_key)],
        input=value,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def armored(public_key, value):
    """``value`` encrypted for ``public_key``: the ASCII-armored message itself."""
    block = encrypt(public_key, value).splitlines()[1:]  # drop the "  name: |" line
    return textwrap.dedent("\n".join(block)) + "\n"


def stop_agent(homedir):
    """gpg starts an agent per homedir: stop ours (found by its socket in ``homedir``)."""
    subprocess.run(
        ["gpgconf", "--homedir", str(homedir), "--kill", "all"], capture_output=True, check=False
    )
