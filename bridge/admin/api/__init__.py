"""The provisioning API, ``/_bridge/api/v1/``: JSON over HTTP on the appservice listener.

- :mod:`.routes`: how an endpoint is declared (one declaration gives the handler, its
  OpenAPI description and its request checks); networks add theirs with
  ``Connector.api_routes()``.
- :mod:`.auth`: who is calling (the operator's shared secret, or a bridge admin's Matrix
  access token).
- :mod:`.server`: mounts every route, answers errors as ``{"errcode", "error"}``.
- :mod:`.core_routes`: the core's endpoints (status, rooms, links, audit, report).
- :mod:`.openapi`: ``GET /openapi.json``, built from the declarations.
"""

PREFIX = "/_bridge/api/v1"
