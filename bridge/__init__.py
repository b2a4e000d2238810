"""A Matrix appservice that keeps Slack channels, email and Matrix rooms in one conversation."""

__version__ = "0.1.0"
