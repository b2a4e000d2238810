"""The appservice side: transaction endpoint, intents for bot and puppets, bot commands."""
