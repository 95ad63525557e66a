"""The application layer: the command line, its subcommands, and the sessions that assemble
the pipeline for ``--simulate`` and ``run`` (signals, systemd notify, progress)."""
