"""
Docker host helpers for the ``docker`` formula.

- ``resolve_disk``: find the real block device of the extra EBS disk from the ``docker_disk``
  grain (the name requested in EC2 differs from the one the kernel gives it on Xen and Nitro).
- ``device_usage`` / ``check_disk``: what a device holds, and whether storage may go on it.
- ``engine_version`` / ``check_storage_driver``: devicemapper exists only in Engine <= 24.
- ``validate``: checks the merged ``docker`` settings before anything changes and returns them
  with the disk resolved; map.jinja calls it, so a bad pillar fails every docker SLS at render
  time, which stops the whole highstate before any state runs.
- ``move_data_root``: move an existing /var/lib/docker into the new volume (never delete).
- ``python_sdk``: whether the minion's Python imports a usable docker SDK, and which pip
  installs into that Python (onedir: salt-pip; pip-installed Salt: its own environment).
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from salt.exceptions import CommandExecutionError

__virtualname__ = "docker_host"

STORAGE_MODES = ("none", "overlay2", "devicemapper")
INSTALL_SOURCES = ("distribution", "docker")
RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")
# Last Docker Engine major version that still has the devicemapper storage driver.
DEVICEMAPPER_LAST_ENGINE = 24
# docker-py 6.x/7.0 fail with requests >= 2.32 ("Not supported URL scheme http+docker").
MIN_SDK_VERSION = (7, 1)
SECRET_KEY = "secret"
PORT_RE = re.compile(
    r"^(?:(?:(?P<ip>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?P<host>\d+(?:-\d+)?)?:)?"
    r"(?P<container>\d+(?:-\d+)?)(?:/(?P<proto>tcp|udp|sctp))?$"
)
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def __virtual__():
    return __virtualname__


# --- finding the disk ------------------------------------------------------------------


def _under(root, path):
    return os.path.join(root, path.lstrip("/"))


def _xen_name(device):
    # Xen's blkfront names the disk requested as /dev/sdX /dev/xvdX.
    match = re.match(r"^/dev/(?:sd|xvd)([a-z]+)$", device)
    return f"/dev/xvd{match.group(1)}" if match else None


def _nvme_by_serial(volume_id, root):
    # On Nitro, EBS volumes are NVMe namespaces; the controller serial is the volume id
    # without its dash ("vol0abc..."), padded with spaces.
    wanted = volume_id.replace("-", "").strip().lower()
    for serial_file in sorted(glob.glob(_under(root, "/sys/block/nvme*/device/serial"))):
        with open(serial_file, encoding="ascii", errors="replace") as handle:
            serial = handle.read().strip().replace("-", "").lower()
        if serial == wanted:
            name = serial_file.split(os.sep)[-3]
            if os.path.exists(_under(root, f"/dev/{name}")):
                return f"/dev/{name}"
    return None


def resolve_disk(device=None, volume_id=None, root="/"):
    """
    Return the block device the extra disk really has on this node.

    ``device`` / ``volume_id`` default to the ``docker_disk`` grain. ``root`` prefixes every
    /dev and /sys path (tests use a fake tree).

    CLI Example: ``salt '*' docker_host.resolve_disk``
    """
    if device is None and volume_id is None:
        grain = __grains__.get("docker_disk") or {}
        if not isinstance(grain, dict) or not grain.get("device"):
            raise CommandExecutionError(
                "grain docker_disk is missing or has no 'device': the node has no extra disk "
                "recorded (set docker:storage:device or docker:storage:mode: none)"
            )
        device, volume_id = grain.get("device"), grain.get("volume_id")
    if not device and not volume_id:
        raise CommandExecutionError("docker_disk: neither device nor volume_id given")
    if device and os.path.exists(_under(root, device)):
        return device
    if volume_id:
        nvme = _nvme_by_serial(volume_id, root)
        if nvme:
            return nvme
    xen = _xen_name(device) if device else None
    if xen and os.path.exists(_under(root, xen)):
        return xen
    raise CommandExecutionError(
        f"docker_disk: no block device for device {device!r} / volume_id {volume_id!r} "
        "(looked for it as-is, as /dev/xvdX and as an NVMe namespace with that volume serial)"
    )


# --- what is on the disk ------------------------------------------------------------------


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def probe_signatures(device):
    """
    Low-level probe (``blkid -p``) of a device or image file: filesystem / partition table /
    LVM label. Returns a dict of blkid's export keys (empty when nothing is found).
    """
    rc, out, err = _run(["blkid", "-p", "-o", "export", device])
    if rc == 2:  # blkid: nothing found
        return {}
    if rc != 0:
        raise CommandExecutionError(f"blkid -p {device} failed: {err.strip() or out.strip()}")
    found = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value
    return found


def _pv_volume_group(device):
    if not shutil.which("pvs"):
        # An LVM label but no LVM tools yet (first run): cannot tell whose; refuse.
        return "unknown (lvm2 is not installed)"
    rc, out, err = _run(["pvs", "--noheadings", "-o", "vg_name", device])
    if rc != 0:
        raise CommandExecutionError(f"pvs {device} failed: {err.strip()}")
    return out.strip() or None


def device_usage(device):
    """
    What ``device`` holds: ``{"filesystem", "partition_table", "volume_group", "lvm_member"}``.

    CLI Example: ``salt '*' docker_host.device_usage /dev/nvme1n1``
    """
    found = probe_signatures(device)
    usage = {
        "filesystem": None,
        "partition_table": found.get("PTTYPE"),
        "lvm_member": found.get("TYPE") == "LVM2_member",
        "volume_group": None,
    }
    if usage["lvm_member"]:
        usage["volume_group"] = _pv_volume_group(device)
    elif found.get("TYPE"):
        usage["filesystem"] = found["TYPE"]
    return usage


def disk_verdict(device, usage, volume_group):
    """
    Decide from ``device_usage`` output: ``"empty"`` (storage may be created), ``"ours"``
    (already a PV of ``volume_group``: nothing to do) or raise naming what is in the way.
    """
    if usage.get("lvm_member"):
        if usage.get("volume_group") == volume_group:
            return "ours"
        owner = usage.get("volume_group") or "no volume group"
        raise CommandExecutionError(
            f"docker:storage: {device} is an LVM physical volume of {owner!r}, not of "
            f"{volume_group!r} (docker:storage:volume_group); refusing to touch it"
        )
    if usage.get("partition_table"):
        raise CommandExecutionError(
            f"docker:storage: {device} holds a {usage['partition_table']} partition table; "
            "refusing to create a physical volume on it"
        )
    if usage.get("filesystem"):
        raise CommandExecutionError(
            f"docker:storage: {device} holds a {usage['filesystem']} filesystem; "
            "refusing to create a physical volume on it"
        )
    return "empty"


def check_disk(device, volume_group="docker_vol"):
    """
    ``"empty"`` or ``"ours"`` for ``device``, or an error saying why storage may not go there.

    CLI Example: ``salt '*' docker_host.check_disk /dev/xvdb docker_vol``
    """
    return disk_verdict(device, device_usage(device), volume_group)


# --- engine version ------------------------------------------------------------------------


def parse_engine_version(text):
    """``"Docker version 20.10.24+dfsg1, build 5d6db84"`` -> ``(20, 10, 24)``."""
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text or "")
    if not match:
        raise CommandExecutionError(f"cannot read a Docker Engine version from {text!r}")
    return tuple(int(part) for part in match.groups())


def engine_version():
    """
    Installed Docker Engine version as a string, or None when dockerd is not installed.

    CLI Example: ``salt '*' docker_host.engine_version``
    """
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
    if not dockerd:
        return None
    _, out, _ = _run([dockerd, "--version"])
    return ".".join(str(part) for part in parse_engine_version(out))


def check_storage_driver(mode, version):
    """
    Raise when storage ``mode`` cannot work with Docker Engine ``version`` (None: unknown yet).
    """
    if mode != "devicemapper" or version is None:
        return True
    major = parse_engine_version(str(version))[0]
    if major > DEVICEMAPPER_LAST_ENGINE:
        raise CommandExecutionError(
            f"docker:storage:mode: devicemapper was removed in Docker Engine 25; this node has "
            f"Engine {version}. Use overlay2 (docker:storage:mode: overlay2) or pin an "
            f"Engine <= {DEVICEMAPPER_LAST_ENGINE}."
        )
    return True


# --- moving an existing data root ----------------------------------------------------------


def move_data_root(source, destination):
    """
    Move every entry of ``source`` into ``destination`` (the freshly mounted volume), keeping
    ``source`` itself as the (now empty) mountpoint. Refuses if ``destination`` already has
    content, so a second call can never mix or clobber data. Returns the moved entry names.
    """
    entries = sorted(os.listdir(source)) if os.path.isdir(source) else []
    if not entries:
        return []
    leftovers = [name for name in os.listdir(destination) if name != "lost+found"]
    if leftovers:
        raise CommandExecutionError(
            f"cannot move {source} into {destination}: it already holds {sorted(leftovers)}"
        )
    # GNU mv, in one call: across filesystems it recreates device nodes, FIFOs and sockets as
    # such (Docker keeps a block device node, volumes/backingFsBlockDev, that shutil.move
    # would copy by reading the whole device) and keeps hard links between the entries.
    result = subprocess.run(
        ["mv", "--", *(os.path.join(source, name) for name in entries), destination],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise CommandExecutionError(
            f"moving {source} into {destination} failed: {result.stderr.strip()}"
        )
    return entries


# --- python SDK -----------------------------------------------------------------------------


def python_sdk():
    """
    ``{"usable": bool, "version": str|None, "bin_env": str}``: ``bin_env`` is the pip for the
    minion's own Python: ``salt-pip`` on onedir (relenv) installs, the running environment
    otherwise.
    """
    try:
        import docker  # noqa: PLC0415 - probing on purpose

        version = docker.__version__
    except ImportError:
        version = None
    usable = False
    if version:
        parts = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
        usable = parts >= MIN_SDK_VERSION
    relenv_root = getattr(sys, "RELENV", None)
    if relenv_root is not None and os.path.exists(os.path.join(str(relenv_root), "salt-pip")):
        bin_env = os.path.join(str(relenv_root), "salt-pip")
    else:
        bin_env = sys.executable
    return {"usable": usable, "version": version, "bin_env": bin_env}


# --- pillar validation ----------------------------------------------------------------------


def _secret_refs(value, path):
    """Yield (key path, secret name) for every ``{secret: name}`` inside ``value``."""
    if isinstance(value, dict):
        if set(value) == {SECRET_KEY}:
            yield path, value[SECRET_KEY]
            return
        for key, item in value.items():
            yield from _secret_refs(item, f"{path}:{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_refs(item, f"{path}:{index}")


def _check_port(port, where):
    text = str(port)
    match = PORT_RE.match(text)
    if not match:
        raise CommandExecutionError(
            f"{where}: malformed port {text!r} (use [ip:][host:]container[/tcp|udp|sctp])"
        )
    for group in ("host", "container"):
        for number in (match.group(group) or "").split("-"):
            if number and not 0 < int(number) < 65536:
                raise CommandExecutionError(f"{where}: port {number} in {text!r} out of range")


def _check_container(name, options, secrets, path):
    if not NAME_RE.match(str(name)):
        raise CommandExecutionError(f"{path}: {name!r} is not a valid container name")
    if not isinstance(options, dict):
        raise CommandExecutionError(f"{path}: must be a mapping of docker_container options")
    if not options.get("image"):
        raise CommandExecutionError(f"{path}:image is missing: every container needs an image")
    for index, port in enumerate(options.get("port_bindings") or []):
        _check_port(port, f"{path}:port_bindings:{index}")
    for index, port in enumerate(options.get("ports") or []):
        _check_port(port, f"{path}:ports:{index}")
    policy = options.get("restart_policy")
    if policy is not None:
        base, _, count = str(policy).partition(":")
        if base not in RESTART_POLICIES or (
            count and (base != "on-failure" or not count.isdigit())
        ):
            raise CommandExecutionError(
                f"{path}:restart_policy: {policy!r} is not one of {', '.join(RESTART_POLICIES)}"
                " (a retry count is only valid as on-failure:N)"
            )
        if options.get("restart_retries") is not None and base != "on-failure":
            raise CommandExecutionError(
                f"{path}:restart_retries is only valid with restart_policy on-failure "
                f"(Docker rejects a retry count with {base!r})"
            )
    for ref_path, secret in _secret_refs(options, path):
        if secret not in secrets:
            raise CommandExecutionError(
                f"{ref_path} refers to secret {secret!r}, which is not in pillar docker_secrets"
                " (is the encrypted pillar for this class in the pillar top?)"
            )


def validate(settings, secrets=None, root="/"):
    """
    Check the merged ``docker`` settings (map.jinja); return them with
    ``storage:device`` resolved to a real block device when storage is enabled.
    Raises CommandExecutionError naming the offending pillar key.
    """
    settings = dict(settings or {})
    if secrets is None:
        secrets = __pillar__.get("docker_secrets") or {}
    install = settings.get("install") or {}
    source = install.get("source")
    if source not in INSTALL_SOURCES:
        raise CommandExecutionError(
            f"docker:install:source: {source!r} is not one of {', '.join(INSTALL_SOURCES)}"
        )
    if not install.get("pkgs", {}).get(source):
        raise CommandExecutionError(
            f"docker:install:source: {source!r} has no packages for this OS "
            f"({__grains__.get('os')} {__grains__.get('osrelease')})"
        )
    storage = dict(settings.get("storage") or {})
    mode = storage.get("mode")
    if mode not in STORAGE_MODES:
        raise CommandExecutionError(
            f"docker:storage:mode: {mode!r} is not one of {', '.join(STORAGE_MODES)}"
        )
    if mode != "none":
        if not NAME_RE.match(str(storage.get("volume_group") or "")):
            raise CommandExecutionError(
                f"docker:storage:volume_group: {storage.get('volume_group')!r} is not a VG name"
            )
        if storage.get("device"):
            device = resolve_disk(storage["device"], storage.get("volume_id"), root=root)
        else:
            device = resolve_disk(root=root)
        check_disk(_under(root, device), storage["volume_group"])
        check_storage_driver(mode, engine_version())
        storage["device"] = device
    settings["storage"] = storage
    for section in ("containers", "networks", "volumes", "registries", "images"):
        if not isinstance(settings.get(section) or {}, dict):
            raise CommandExecutionError(f"docker:{section} must be a mapping")
    for name, options in (settings.get("containers") or {}).items():
        _check_container(name, options, secrets, f"docker:containers:{name}")
    for url, login in (settings.get("registries") or {}).items():
        where = f"docker:registries:{url}"
        if not isinstance(login, dict) or not login.get("username") or not login.get("password"):
            raise CommandExecutionError(f"{where}: needs username and password")
        for ref_path, secret in _secret_refs(login, where):
            if secret not in secrets:
                raise CommandExecutionError(
                    f"{ref_path} refers to secret {secret!r}, which is not in pillar docker_secrets"
                )
    absent = settings.get("absent") or []
    if not isinstance(absent, list):
        raise CommandExecutionError("docker:absent must be a list of container names")
    both = sorted(set(absent) & set(settings.get("containers") or {}))
    if both:
        raise CommandExecutionError(f"docker:absent: {both} are also in docker:containers")
    settings["daemon_json"] = daemon_json(settings)
    return settings


def dm_path(volume_group, logical_volume):
    """/dev/mapper name of an LV (LVM doubles hyphens inside names)."""
    return f"/dev/mapper/{volume_group.replace('-', '--')}-{logical_volume.replace('-', '--')}"


def daemon_json(settings):
    """
    daemon.json content: pillar ``docker:config`` plus what the storage mode needs
    (devicemapper: Docker's direct-lvm options pointing at the thin pool).
    """
    config = dict(settings.get("config") or {})
    storage = settings.get("storage") or {}
    mode = storage.get("mode")
    if mode == "overlay2":
        config["storage-driver"] = "overlay2"
    elif mode == "devicemapper":
        thinpool = storage["devicemapper"]["thinpool"]
        config["storage-driver"] = "devicemapper"
        config["storage-opts"] = [
            f"dm.thinpooldev={dm_path(storage['volume_group'], thinpool)}",
            "dm.use_deferred_removal=true",
            "dm.use_deferred_deletion=true",
        ]
    return config
