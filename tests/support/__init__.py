"""Test support code: a real Synapse homeserver harness and a small Matrix client."""
