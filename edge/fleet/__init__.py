"""Many doors, one gallery: signed gallery bundles distributed over the MQTT broker.

The admin machine enrols people into a local gallery (``facegate enroll``)
and publishes it to the site's doors (``facegate fleet push``); each door
with ``[fleet] enabled = true`` verifies, applies and reports it. No server
of our own: the broker's retained messages are the distribution. Modules,
bottom up:

* :mod:`~edge.fleet.keys`: the admin's Ed25519 pair, the doors' trusted
  public keys, the site's AES key; ``keygen``;
* :mod:`~edge.fleet.bundle`: the bundle format as pure functions (payload,
  AES-GCM, chunks, the signed manifest, every check a door makes);
* :mod:`~edge.fleet.topics`: where bundles live on the broker;
* :mod:`~edge.fleet.store`: what a door keeps in ``service.state_dir`` (the
  bundle it holds, the highest version seen, when it was last current);
* :mod:`~edge.fleet.sync`: the door's side as a state machine (connect,
  manifest, chunks, apply; the gate that holds grants until synced);
* :mod:`~edge.fleet.device`: that machine as an extension of the MQTT
  publisher (:class:`~edge.delivery.extension.Extension`);
* :mod:`~edge.fleet.admin`: ``push`` and ``status`` over an MQTT client of their own.

docs/fleet.md has the design: formats, topics, the ACL, the order of a push,
the reconnect-before-grant rule and every failure.
"""
