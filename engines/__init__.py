"""Inference engines behind one small interface, and the model artifact contract.

Nothing here imports from ``birdd.daemon`` or ``birdd.training``: both depend on this package.
"""
