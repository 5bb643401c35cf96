"""
Secret references and masking, shared by the containers and swarm modules and states
(``__utils__["dockerhosts_secrets.<function>"]``).

Pillar names a secret as ``{secret: <name>}``; the value is pillar ``docker_secrets:<name>``
(decrypted by the master from GPG ciphertext). It is resolved only where it is used, and every
value a state used is masked in what the state returns.
"""

MASK = "**********"
SECRETS_KEY = "docker_secrets"


def is_ref(value):
    """Whether ``value`` is a ``{secret: <name>}`` reference."""
    return isinstance(value, dict) and set(value) == {"secret"}


def ref_paths(value, path):
    """The key paths (``a:b:0``) of every reference inside ``value``."""
    if is_ref(value):
        return [path]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in ref_paths(item, f"{path}:{key}")]
    if isinstance(value, list):
        return [
            found
            for index, item in enumerate(value)
            for found in ref_paths(item, f"{path}:{index}")
        ]
    return []


def resolve(value, secrets, used):
    """``value`` with every reference replaced by its secret (a string); each value used is
    appended to ``used`` (for ``masked``). KeyError naming the secret when it is missing."""
    if is_ref(value):
        name = value["secret"]
        if not isinstance(name, str) or name not in (secrets or {}):
            raise KeyError(f"secret {name!r} is not in pillar {SECRETS_KEY}")
        secret = str(secrets[name])
        used.append(secret)
        return secret
    if isinstance(value, dict):
        return {key: resolve(item, secrets, used) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, secrets, used) for item in value]
    return value


def masked(value, secrets):
    """``value`` (a state's return, an error message ...) with each of ``secrets`` replaced by
    ``**********`` in every string inside it, mapping keys included; the longest first, so a
    secret that contains another is masked whole. Lists and tuples come back as lists."""
    hidden = sorted({str(secret) for secret in secrets if secret}, key=len, reverse=True)
    return _masked_with(value, hidden) if hidden else value


def _masked_with(value, hidden):
    if isinstance(value, str):
        for secret in hidden:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {_masked_with(k, hidden): _masked_with(v, hidden) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked_with(item, hidden) for item in value]
    return value
