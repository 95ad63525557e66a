"""The pipeline stages between a source and the post-processor: capture (ring buffer, level
meter, live clock), windows, batched inference, and ``chain.Pipeline`` that joins them with
bounded queues."""
