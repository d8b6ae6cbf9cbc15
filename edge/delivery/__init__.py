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
* :mod:`~edge.delivery.outbox_db` and :mod:`~edge.delivery.outbox`: the
  durable SQLite outbox;
* :mod:`~edge.delivery.publishers`: the publisher interface and the
  publishers without a broker (JSON lines, memory);
* :mod:`~edge.delivery.transport`: one paho client (TLS, Last Will,
  publish with acks), imported lazily;
* :mod:`~edge.delivery.drain`: the delivery loop (outbox drained in order,
  windowed, rate-limited, rewound after a reconnect);
* :mod:`~edge.delivery.sender`: each event's ``delivery`` decided and signed
  at each send;
* :mod:`~edge.delivery.extension`: what a feature watching the flow may
  hook (Home Assistant, fleet);
* :mod:`~edge.delivery.announce`: availability, state, presence, statuses;
* :mod:`~edge.delivery.mqtt`: :class:`~edge.delivery.mqtt.MqttPublisher`,
  all of the above put together.
"""
