"""A real container registry for the tests: Debian's ``docker-registry`` (Distribution)
with htpasswd (bcrypt) authentication and TLS from a throwaway CA.

Docker skips certificate checks for registries in 127.0.0.0/8, so the registry listens on an
address of its own (on an empty bridge in the test's network namespace) under a name that
resolves to it only for the dockerds given ``etc_overlays`` (tools/dockerd.py): their
``/etc/hosts`` names it, their ``/etc/docker/certs.d/<host:port>/ca.crt`` is the test CA.
"""

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from tools import processes

REGISTRY_BINARY = "/usr/bin/docker-registry"
START_TIMEOUT = 20

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # bcrypt through the system's libcrypt; gone in Python 3.13


@dataclass
class Registry:
    host: str  # "name:port", as image references and docker login name it
    address: str
    ca_cert: Path
    workdir: Path
    pid: int

    def image(self, path):
        return f"{self.host}/{path}"


def bcrypt_htpasswd(path, users):
    """An htpasswd file with a bcrypt hash per ``{user: password}`` (all the registry takes)."""
    lines = [
        f"{user}:{crypt.crypt(pw, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2**4))}"
        for user, pw in users.items()
    ]
    Path(path).write_text("\n".join(lines) + "\n")


def _openssl(*args):
    subprocess.run(["openssl", *args], capture_output=True, check=True)


def make_certificates(directory, hostname, address):
    """A CA and a server certificate for ``hostname`` (and ``address``) signed by it."""
    directory = Path(directory)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, request, cert = (
        directory / "server.key",
        directory / "server.csr",
        directory / "server.crt",
    )
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=docker-hosts test CA",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_cert),
    )
    _openssl(
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={hostname}",
        "-addext",
        f"subjectAltName=DNS:{hostname},IP:{address}",
        "-keyout",
        str(key),
        "-out",
        str(request),
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(request),
        "-CA",
        str(ca_cert),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-copy_extensions",
        "copyall",
        "-out",
        str(cert),
    )
    return ca_cert, cert, key


def etc_overlays(directory, registries):
    """``/etc/hosts`` and ``/etc/docker`` for a dockerd that knows ``registries``: their names
    resolve, their CA is trusted (for ``tools.dockerd.running_dockerd(etc_overlays=...)``)."""
    directory = Path(directory)
    hosts = directory / "hosts"
    entries = [f"{reg.address} {reg.host.split(':')[0]}" for reg in registries]
    hosts.write_text(Path("/etc/hosts").read_text() + "\n".join(entries) + "\n")
    etc_docker = directory / "etc-docker"
    for reg in registries:
        certs = etc_docker / "certs.d" / reg.host
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copy(reg.ca_cert, certs / "ca.crt")
    etc_docker.mkdir(exist_ok=True)
    return {"/etc/hosts": hosts, "/etc/docker": etc_docker}


def _address_interface(name, address):
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)


def _wait_for_tls(address, port, ca_cert, hostname, process):
    context = ssl.create_default_context(cafile=str(ca_cert))
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with (
                socket.create_connection((address, port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname=hostname),
            ):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not start") from None
            time.sleep(0.1)


@contextlib.contextmanager
def running_registry(hostname, address, users, port=5443, interface="dh-reg0"):
    """Run a registry at ``hostname:port`` (listening on ``address``) for ``users``."""
    workdir = Path(tempfile.mkdtemp(prefix="dh-registry-"))
    process = None
    interface_made = False
    try:
        ca_cert, cert, key = make_certificates(workdir, hostname, address)
        bcrypt_htpasswd(workdir / "htpasswd", users)
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}},
            "http": {
                "addr": f"{address}:{port}",
                "secret": os.urandom(16).hex(),
                "tls": {"certificate": str(cert), "key": str(key)},
            },
            "auth": {"htpasswd": {"realm": "docker-hosts-test", "path": str(workdir / "htpasswd")}},
        }
        (workdir / "config.yml").write_text(yaml.safe_dump(config))
        _address_interface(interface, address)
        interface_made = True
        with open(workdir / "registry.log", "wb") as log:
            process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(workdir / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_for_tls(address, port, ca_cert, hostname, process)
        yield Registry(
            host=f"{hostname}:{port}",
            address=address,
            ca_cert=ca_cert,
            workdir=workdir,
            pid=process.pid,
        )
    finally:
        if process is not None:
            processes.stop(process, 10)
        if interface_made:
            subprocess.run(["ip", "link", "delete", interface], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def docker_cli(dockerd, config_dir, *args, stdin=None):
    """The docker CLI against ``dockerd`` with its own client config (never root's)."""
    proc = subprocess.run(
        ["docker", "-H", dockerd.url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DOCKER_CONFIG": str(config_dir)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"docker {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


def push(dockerd, registry, source, target, *, username, password):
    """Tag local image ``source`` as ``registry``/``target`` and push it with the docker CLI;
    returns the pushed reference."""
    reference = registry.image(target)
    with tempfile.TemporaryDirectory(prefix="dh-docker-cli-") as config_dir:
        docker_cli(
            dockerd,
            config_dir,
            "login",
            "--username",
            username,
            "--password-stdin",
            registry.host,
            stdin=password,
        )
        docker_cli(dockerd, config_dir, "tag", source, reference)
        docker_cli(dockerd, config_dir, "push", reference)
        docker_cli(dockerd, config_dir, "rmi", reference)
    return reference
