"""Test support shared by the tests, the demo (scripts/demo.py) and the benchmarks (bench/).

A real Synapse harness (`synapse`), a small Matrix client (`matrix_client`, `helpers`), an SMTP
sink (`smtp_sink`), a TCP proxy that can cut connections (`tcp_proxy`), the stub homeserver of
the benchmarks (`stub_homeserver`) and a Slack simulator (`slack_sim`). It is importable from
the editable install (`make .venv/.installed`), like `bridge`, but is not part of the wheel.
"""
