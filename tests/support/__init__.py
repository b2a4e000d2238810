"""Test support code that stays beside the fixtures: the test-only recording connector."""
