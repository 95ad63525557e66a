"""The SQLite store (the station's source of truth): schema and migrations, runs, detections,
gaps, and the MQTT outbox's view of them. The SQLite sink and the MQTT outbox both use it."""
