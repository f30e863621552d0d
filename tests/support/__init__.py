"""Helpers shared by tests: builders of test doubles that go through the real loading paths."""
