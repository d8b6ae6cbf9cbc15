"""Delivery: decisions become events that reach the broker, in order, at least once.

The stage after :mod:`edge.decide`; it never imports the door or Home
Assistant (they hang off it: :mod:`edge.door` publishes through a small sink,
:mod:`edge.homeassistant` is an extension of the MQTT publisher). In import
order:

* :mod:`~edge.delivery.codec`: the JSON wire form (compact out, strict in);
* :mod:`~edge.delivery.topics`: the device's MQTT topics;
* :mod:`~edge.delivery.events`: the event, door-event and state payloads;
* :mod:`~edge.delivery.signing`: the events' HMAC signature;
* :mod:`~edge.delivery.ratelimit`: token bucket and burst log;
* :mod:`~edge.delivery.commands`: the command topic's one entrance;
* :mod:`~edge.delivery.outbox`: the durable SQLite outbox;
* :mod:`~edge.delivery.publishers`: the publisher interface and the
  publishers without a broker (JSON lines, memory);
* :mod:`~edge.delivery.mqtt`: the MQTT publisher (paho-mqtt, imported lazily).
"""
