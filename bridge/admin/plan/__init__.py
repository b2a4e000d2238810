"""Migration plans: ``bridge plan check|apply -c config.yaml PLAN.yaml``.

A plan (YAML, format in docs/migration-plan.example.yaml) says which rooms each department
gets, with their Slack channels, email address, policy and subscribers. The commands are
clients of the running bridge's provisioning API, so a plan step is the same action, with
the same checks and messages, as the bot command and the API call:

- :mod:`.schema`: reads and validates the file, naming the path of every mistake;
- :mod:`.client`: the API client (bounded concurrency);
- :mod:`.check`: checks the plan against the live systems, one line per finding;
- :mod:`.apply`: works out what differs and does it, one line per action.
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
