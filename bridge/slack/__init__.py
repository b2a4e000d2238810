"""The Slack connector: channels mirrored into Matrix rooms, both ways."""
