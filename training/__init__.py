"""Offline training: classifier heads on BirdNET embeddings, distillation, export (later issues)."""
