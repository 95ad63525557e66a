"""Detection sinks: SQLite (the source of truth) and the text outputs, fed by ``SinkFanout``."""
