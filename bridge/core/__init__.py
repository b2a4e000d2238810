"""Network-neutral model and rules: portals and links, the relay rule, the durable queues.

Knows nothing about Slack or SMTP; connectors plug in through :mod:`bridge.core.connector`.
"""
