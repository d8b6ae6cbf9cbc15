"""Home Assistant: every discovery config and entity the device announces.

It watches the flow rather than carrying it, like zigbee2mqtt's
extensions: the MQTT publisher (:mod:`edge.delivery.mqtt`) knows nothing of
Home Assistant. :mod:`~edge.homeassistant.discovery` builds the entity
configs (the face event, last person, presence, diagnostics, device
triggers and the door's lock, door and tamper entities).
"""
