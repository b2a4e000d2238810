"""People: identity links that tie a remote identity (a Slack user, an email address) to a
person's own Matrix account. ``actions`` holds the one implementation of link, unlink and
list that the bot, the provisioning API and migration plans call; ``changes`` is where
what follows a change (double puppeting) hooks in. Names no network: the connectors'
``resolve_person`` says what the words mean."""
