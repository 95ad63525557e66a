"""The monitoring hub: MQTT ingest from many stations into one database (SQLite or
PostgreSQL), and the queries the dashboard and the HTTP API answer from (``birdd hub serve``)."""
