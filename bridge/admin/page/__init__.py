"""The admin web page, ``/_bridge/admin/``: static files shipped in the package (no build
step, nothing loaded from the internet) that call the provisioning API from the browser,
plus a login endpoint that trades a Matrix user name and password for an access token at
the homeserver, so the browser needs to reach only the bridge. See :mod:`.page`."""
