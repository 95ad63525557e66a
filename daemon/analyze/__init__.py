"""``birdd analyze PATH…``: a folder, a card or an archive of recordings through the simulate
pipeline on every core, resumable, with per-file results in SQLite and text outputs."""
