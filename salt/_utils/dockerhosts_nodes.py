"""
The master's record of each node, one per node name (= minion id), from create to destroy:
``__utils__["dockerhosts_nodes.<function>"](opts, ...)`` in salt-cloud's driver, the master's
runners and its pillar. Nothing else writes or reads the records' storage.

The records live in Salt's pluggable minion data cache (``salt.cache``, the master's ``cache``
option: ``localfs`` unless configured otherwise), bank ``dockerhosts/nodes``. For ``localfs``
the cache directory is the master's ``pki_dir``: salt-cloud's processes run with a cache
directory of their own, but the same ``pki_dir`` as the master whose keys they accept, and a
node's record belongs with its key.

Writers (salt-cloud, the reactor's runners, the operator's) change a record through
``update``, which reads, changes and stores it under ``locked``, so no update is lost. A lock
has one holder among every process of every master sharing the store: with ``cache: redis``
(several masters, docs/multimaster.md) a Redis key with a lease (redis-py's ``Lock``) that its
holder renews, so a master that dies frees its locks when the lease lapses; otherwise an
``flock`` below the ``pki_dir`` (the records' lock: on the ``dockerhosts`` directory itself,
so no lock file is left).

A record is a mapping; its fields and who sets them: docs/lifecycle.md. ``class_of`` is what
pillar uses: the class of an authenticated minion id, only while the key the record was made
for is still the accepted one.

The registry before records (``<pki_dir>/node_classes/<id>`` files, ``<cachedir>/
node_converge/<id>.json`` converge results) is moved into records at the first access
(``migrate``): an entry whose minion has no accepted key now is dropped, not carried over.
"""

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from glob import glob

import salt.cache

log = logging.getLogger(__name__)

BANK = "dockerhosts/nodes"
SWARMS = "dockerhosts/swarms"  # runner swarm's memory of each class's swarm
LEGACY_CLASSES = "node_classes"
LEGACY_CONVERGE = "node_converge"
RECORDS = "records"  # the lock every record change holds
# Seconds a dead master's lock outlives it (its holder renews it every third of that); the
# master option dockerhosts_lock_lease sets it.
LEASE = 30


def _migrated(opts):
    """``opts`` once the registry before records is migrated (before any lock is held), once
    per store in this process."""
    store = (opts.get("cache", "localfs"), opts.get("pki_dir"), opts.get("cachedir"))
    if opts.get("dockerhosts_migrated") or store in _MIGRATED:
        return opts
    migrate(opts)
    _MIGRATED.add(store)
    return opts


# Per loaded module: the stores migrated, and the cache of each store (building one copies
# the opts and loads Salt's cache modules: a destroy of 20 nodes spent 0.7 s doing that on
# every call). Keyed by what names the store, so it holds one entry per store, not per opts.
_MIGRATED, _STORES = set(), {}
STORE_OPTIONS = ("cache", "pki_dir", "cachedir", "memcache_expire_seconds")
STORE_OPTIONS += tuple(f"cache.redis.{k}" for k in ("host", "port", "db", "unix_socket_path"))


def _cache(opts):
    key = tuple(str(opts.get(option)) for option in STORE_OPTIONS)
    if key not in _STORES:
        config = dict(_migrated(opts))
        if config.get("cache", "localfs") == "localfs":
            config["cachedir"] = config["pki_dir"]
        _STORES[key] = salt.cache.factory(config)
    return _STORES[key]


def _redis(opts):
    """A client of the store Salt's ``redis`` cache uses (its ``cache.redis.*`` options)."""
    import redis  # noqa: PLC0415  (only a master with cache: redis needs it)

    return redis.Redis(
        host=opts.get("cache.redis.host", "localhost"),
        port=opts.get("cache.redis.port", 6379),
        db=opts.get("cache.redis.db", "0"),
        password=opts.get("cache.redis.password") or None,
        unix_socket_path=opts.get("cache.redis.unix_socket_path"),
    )


def shared(opts):
    """Whether several masters share this master's records (docs/multimaster.md)."""
    return opts.get("cache", "localfs") == "redis"


def _renew(lock, done, lease):
    while not done.wait(lease / 3):
        try:
            lock.reacquire()
        except Exception as error:  # the store is away: retry; the lease may lapse
            log.warning("lock %s: cannot renew its lease: %s", lock.name, error)


@contextlib.contextmanager
def _redis_lock(opts, name, wait):
    lease = opts.get("dockerhosts_lock_lease", LEASE)
    lock = _redis(opts).lock(f"dockerhosts/lock/{name}", timeout=lease, blocking_timeout=wait)
    if not lock.acquire():
        raise TimeoutError(f"lock {name}: another master holds it")
    done = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lock, done, lease), daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
        with contextlib.suppress(Exception):  # lapsed meanwhile: nothing to release
            lock.release()


@contextlib.contextmanager
def locked(opts, name=RECORDS, wait=None):
    """Hold lock ``name`` (the records', or e.g. ``swarm/backends``); waits up to ``wait``
    seconds (None: as long as it takes), then TimeoutError."""
    if shared(opts):
        with _redis_lock(opts, name, wait):
            yield
        return
    directory = os.path.join(opts["pki_dir"], "dockerhosts")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = directory if name == RECORDS else os.path.join(directory, name.replace("/", "-"))
    flags = os.O_RDONLY | (os.O_DIRECTORY if path == directory else os.O_CREAT)
    handle = os.open(path, flags, 0o600)
    deadline = None if wait is None else time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"lock {name}: another process holds it") from None
                time.sleep(0.5)
        yield
    finally:
        os.close(handle)


def held(opts, name):
    """Whether some process (of any master sharing the store) holds lock ``name`` now."""
    if shared(opts):
        return bool(_redis(opts).exists(f"dockerhosts/lock/{name}"))
    try:
        with locked(opts, name, wait=0):
            return False
    except TimeoutError:
        return True


def get(opts, name):
    """The record of node ``name``, or None."""
    return _cache(opts).fetch(BANK, name) or None


def put(opts, name, record):
    """Replace the record of node ``name`` (callers that change one hold ``locked``)."""
    record = copy.deepcopy(record)
    record["name"] = name
    record["updated"] = time.time()
    _cache(opts).store(BANK, name, record)
    return record


def update(opts, name, when=None, **fields):
    """Merge ``fields`` into the record of node ``name`` (made when missing), atomically. With
    ``when``, a test of the current record (None when there is none): nothing changes unless
    it passes, and the result is None (compare-and-set)."""
    opts = _migrated(opts)
    with locked(opts):
        record = get(opts, name)
        if when is not None and not when(record):
            return None
        return put(opts, name, {**(record or {}), **fields})


def forget(opts, name, when=None):
    """Remove the record of node ``name`` (unless ``when(record)`` is false): the record it
    had, or None."""
    opts = _migrated(opts)
    with locked(opts):
        record = get(opts, name)
        if record is None or (when is not None and not when(record)):
            return None
        _cache(opts).flush(BANK, name)
        return record


def names(opts):
    """Every node name with a record."""
    return sorted(_cache(opts).list(BANK))


def records(opts, node_class=None):
    """``{name: record}`` of every node, or of one class."""
    found = {name: get(opts, name) for name in names(opts)}
    return {
        name: record
        for name, record in found.items()
        if record and (node_class is None or record.get("class") == node_class)
    }


def key_fingerprint(opts, minion_id, keys="minions"):
    """sha256 of ``minion_id``'s accepted key (one per node incarnation: salt-cloud makes a new
    key per create), or None when no key of that id is accepted; ``keys="minions_pre"``: of
    its pending key."""
    if not isinstance(minion_id, str) or "/" in minion_id or minion_id.startswith("."):
        return None
    try:
        with open(os.path.join(opts["pki_dir"], keys, minion_id), "rb") as handle:
            return hashlib.sha256(handle.read().strip()).hexdigest()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def class_of(opts, minion_id):
    """The class of an authenticated minion id: its record's class, only while the key the
    record was made for is the one accepted now (a new key for an old name has no class)."""
    record = get(opts, minion_id)
    if not record or not record.get("class") or not record.get("key"):
        return None
    return record["class"] if record["key"] == key_fingerprint(opts, minion_id) else None


def members(opts, node_class):
    """Sorted minion ids whose ``class_of`` is ``node_class``."""
    return sorted(name for name in names(opts) if class_of(opts, name) == node_class)


def classes(opts):
    """The classes that exist: the folders ``classes/<class>/`` of the base pillar roots
    (docs/lifecycle.md, "A class")."""
    roots = opts.get("pillar_roots", {}).get("base", [])
    return sorted({os.path.basename(p.rstrip("/")) for r in roots for p in glob(f"{r}/classes/*/")})


def class_problem(opts, node_class):
    """What is wrong with ``node_class`` as a record's class, or None: it must be a folder of
    ``pillar/classes/`` (whose name rules the names util checks)."""
    known = classes(opts)
    if node_class in known:
        return None
    return (
        f"{node_class!r} is not a class: no folder pillar/classes/{node_class} ({', '.join(known)})"
    )


# --- the registry before records ---------------------------------------------------------


def migrate(opts):
    """Move ``<pki_dir>/node_classes/<id>`` and ``<cachedir>/node_converge/<id>.json`` into
    records, once; what cannot be carried over safely is logged and dropped."""
    opts = {**opts, "dockerhosts_migrated": True}
    if shared(opts):
        _move_to_shared_store(opts)
    legacy = os.path.join(opts["pki_dir"], LEGACY_CLASSES)
    converged = os.path.join(opts.get("cachedir") or legacy, LEGACY_CONVERGE)
    if not (os.path.isdir(legacy) or os.path.isdir(converged)):
        return
    with locked(opts):
        for name in _legacy_names(legacy, ""):
            _migrate_class(opts, name, os.path.join(legacy, name))
        for name in _legacy_names(converged, ".json"):
            _migrate_converge(opts, name, os.path.join(converged, f"{name}.json"))
        for directory in (legacy, converged):
            shutil.rmtree(directory, ignore_errors=True)


def _move_to_shared_store(opts):
    """A master that kept its records and swarm memory in ``localfs`` and now shares a store
    (docs/multimaster.md): each entry the store lacks is copied there, once; the local bank is
    kept, renamed ``<bank>.moved-<time>``."""
    for bank, directory in ((BANK, opts["pki_dir"]), (SWARMS, opts["cachedir"])):
        local = os.path.join(directory, bank)
        if not os.path.isdir(local):
            continue
        source = salt.cache.factory({**opts, "cache": "localfs", "cachedir": directory})
        store = salt.cache.factory(opts)
        with locked(opts):
            for key in source.list(bank):
                if not store.contains(bank, key):
                    store.store(bank, key, source.fetch(bank, key))
            os.rename(local, f"{local}.moved-{int(time.time())}")
        log.warning("node records: moved %s into the shared store (kept beside it)", local)


def _legacy_names(directory, suffix):
    if not os.path.isdir(directory):
        return []
    entries = (e for e in os.listdir(directory) if e.endswith(suffix) and e[0] != ".")
    return sorted(e[: len(e) - len(suffix)] for e in entries if not e.endswith(".lock"))


def _migrate_class(opts, name, path):
    with open(path, encoding="utf-8") as handle:
        node_class = handle.read().strip()
    key = key_fingerprint(opts, name)
    if key is None:
        log.warning("node records: %s had class %s but no accepted key: dropped", name, node_class)
        return
    if get(opts, name) is None:
        record = {"class": node_class, "key": key, "source": "operator", "state": "deployed"}
        put(opts, name, record)


def _migrate_converge(opts, name, path):
    record = get(opts, name)
    try:
        with open(path, encoding="utf-8") as handle:
            result = json.load(handle)
    except ValueError:
        result = {}
    if not record or result.get("key") != record.get("key") or not result.get("finished"):
        return
    state = "converged" if result.get("result") else "failed"
    put(opts, name, {**record, "state": state, "converge": result})
