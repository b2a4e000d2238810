"""Administration: the actions an operator takes (link, unlink, subscribe, ...), written once
in :mod:`bridge.admin.actions` (and a network's own in its folder), and the ways to reach
them: bot commands (bridge/matrix/bot.py), the provisioning API (:mod:`bridge.admin.api`),
migration plans (:mod:`bridge.admin.plan`) and the admin web page (:mod:`bridge.admin.page`).
Every action is written to the audit log (:mod:`bridge.admin.audit`); the progress report
is :mod:`bridge.admin.report`.
"""
