"""MQTT: the outbox publisher carrying SQLite's detections to the hub, and the hub's listener."""
