"""
What every master sharing a fleet must hold the same (docs/multimaster.md), copied from a
master that has it to one that joins: the master key pair and the accepted minion keys (the
master's ``pki_dir``) and the GPG key ring that decrypts pillar secrets (``gpg_keydir``).

    bin/add-master --export [-c CONFIG_DIR] \\
        | ssh m2 'cd /srv/docker-hosts && bin/add-master --import'

The stream is a tar archive on stdout/stdin (private keys: send it over SSH, never to a file
others can read). Import refuses, changing nothing, when the joining master already has a
different master key or a different key accepted under a minion's name; what it already has
the same is left as it is, so running it again (e.g. ``--keys-only`` after new nodes were
created on the first master) is safe.
"""

import argparse
import io
import os
import sys
import tarfile
from pathlib import Path

import salt.config

REPO_ROOT = Path(__file__).resolve().parents[1]
MASTER_KEYS = ("master.pem", "master.pub")


def _paths(config_dir):
    opts = salt.config.master_config(os.path.join(config_dir, "master"))
    return Path(opts["pki_dir"]), Path(opts.get("gpg_keydir") or "/etc/salt/gpgkeys")


def export(config_dir, keys_only, out):
    pki, gpg = _paths(config_dir)
    members = [(pki / "minions", "pki/minions")]
    if not keys_only:
        members += [(pki / name, f"pki/{name}") for name in MASTER_KEYS]
        members += [(gpg, "gpg")]
    missing = [str(path) for path, _ in members if not path.exists()]
    if missing:
        raise SystemExit(f"add-master: nothing to export: {', '.join(missing)} missing")
    with tarfile.open(fileobj=out, mode="w|") as archive:
        for path, name in members:
            archive.add(path, arcname=name)


def _conflicts(archive, pki, gpg):
    """Files the stream holds that the joining master has with other content."""
    found = []
    for member in archive.getmembers():
        target = _target(member.name, pki, gpg)
        if member.isfile() and target.is_file():
            if target.read_bytes() != archive.extractfile(member).read():
                found.append(str(target))
    return found


def _target(name, pki, gpg):
    top, _, rest = name.partition("/")
    return (pki / rest) if top == "pki" else (gpg / rest)


def import_(config_dir, stream):
    pki, gpg = _paths(config_dir)
    try:
        archive = tarfile.open(fileobj=io.BytesIO(stream.read()), mode="r:")
        names = [m.name for m in archive.getmembers()]
    except tarfile.TarError as error:
        raise SystemExit(
            f"add-master: no export stream on stdin ({error}): nothing was changed"
        ) from None
    if any(n.split("/")[0] not in ("pki", "gpg") or ".." in n.split("/") for n in names):
        raise SystemExit("add-master: not an add-master --export stream")
    conflicts = _conflicts(archive, pki, gpg)
    if conflicts:
        raise SystemExit(
            "add-master: this master already has other keys at "
            + ", ".join(conflicts)
            + ": nothing was changed (a second master must share the first one's keys; "
            "remove those files first if this master never served the fleet)"
        )
    added = []
    for member in archive.getmembers():
        target = _target(member.name, pki, gpg)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(member.mode & 0o700)
        elif member.isfile() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            target.write_bytes(archive.extractfile(member).read())
            target.chmod(member.mode & 0o700)
            added.append(str(target))
    print(f"add-master: {len(added)} file(s) added, {len(names) - len(added)} already there")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bin/add-master", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--export", action="store_true", help="write the stream to stdout")
    mode.add_argument("--import", dest="import_", action="store_true", help="read it from stdin")
    parser.add_argument("--keys-only", action="store_true", help="only the accepted minion keys")
    parser.add_argument("-c", "--config-dir", default=str(REPO_ROOT), help="the master's config")
    args = parser.parse_args(argv)
    if args.export:
        export(args.config_dir, args.keys_only, sys.stdout.buffer)
    else:
        import_(args.config_dir, sys.stdin.buffer)


if __name__ == "__main__":
    main()
