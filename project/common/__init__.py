"""Plumbing every layer may use: one-line user errors, crash-safe file writes, the allocator setting, progress bars."""
