"""Home Assistant: every discovery config and entity the device announces.

It watches the flow rather than carrying it, like zigbee2mqtt's extensions:
the MQTT publisher (:mod:`edge.delivery.mqtt`) knows nothing of Home
Assistant. In import order:

* :mod:`~edge.homeassistant.discovery`: the entity configs, pure functions
  (the face event, last person, presence, diagnostics, device triggers, and
  the door's lock, door and tamper entities);
* :mod:`~edge.homeassistant.extension`: :class:`~edge.homeassistant.extension.HomeAssistant`,
  the publisher's extension that announces them, clears what is no longer
  wanted and keeps the ``last_person`` topic.

:class:`edge.daemon.Publisher` is the MQTT publisher with this extension.
"""
