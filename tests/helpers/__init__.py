"""Test helpers, imported by the tests directly (``from helpers.synthetic import ...``), never from conftest."""
