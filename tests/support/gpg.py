"""Throwaway GPG keys for encrypted pillar: a keyring the test master uses as gpg_keydir,
and values encrypted for it exactly as bin/encrypt-secret does (public key file + stdin)."""

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_key(homedir, name="test-master"):
    """Create a passphrase-less key pair in ``homedir``; returns its exported public key file."""
    homedir = Path(homedir)
    homedir.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(
        [
            "gpg",
            "--homedir",
            str(homedir),
            "--batch",
            "--passphrase",
            "",
            "--pinentry-mode",
            "loopback",
            "--quick-gen-key",
            f"{name} <{name}@test.invalid>",
            "default",
            "default",
            "never",
        ],
        capture_output=True,
        check=True,
    )
    public = homedir / "public.asc"
    public.write_bytes(
        subprocess.run(
            ["gpg", "--homedir", str(homedir), "--armor", "--export"],
            capture_output=True,
            check=True,
        ).stdout
    )
    return public


def encrypt(public_key, value):
    """The YAML block scalar bin/encrypt-secret prints for ``value``."""
    return subprocess.run(
        [str(REPO_ROOT / "bin" / "encrypt-secret"), str(public_key)],
        input=value,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def stop_agent(homedir):
    subprocess.run(
        ["gpgconf", "--homedir", str(homedir), "--kill", "all"], capture_output=True, check=False
    )
