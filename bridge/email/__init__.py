"""The email connector: staff who stay on email take part in Matrix rooms.

parse/ and sanitize.py turn incoming mail into Matrix content, compose.py and
addresses.py turn Matrix messages into mail, connector.py runs SMTP both ways.
"""
