# The two commands of the README's quick start, and a few more for developers.
#   make demo   set up, then run the bridge against a throwaway local Synapse (SQLite)
#   make test   set up, then run the linters and the whole test suite (every tier)
#   make test-fast   only the unit tier: no Synapse, no PostgreSQL, no network (tests/tiers.py)
#   make bench, make bench-slack, make bench-plan, make bench-e2ee, make bench-import,
#   make bench-email, make bench-memory, make bench-retention   benchmarks (bench/README.md)
#   make bench-faults   the fault run of issue 14 (bench/README.md)

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test test-fast lint bench bench-slack bench-plan bench-e2ee bench-import bench-email bench-retention bench-faults bench-memory clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --only-binary=python-olm,vodozemac,pycryptodome -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# -rs lists every skipped test with its reason, so a run that skipped half the suite
# (no PostgreSQL, no ../shared samples) does not pass unnoticed. The tests mostly wait for
# Synapse and the bridge: one worker process per core (up to 4, each with its own
# Synapse; a test file stays on one worker) more than halves the time on 2 cores.
test: $(VENV)/.installed lint
	scripts/ensure-postgres.sh
	$(PY) -m pytest -rfEs -n auto --maxprocesses=4 --dist loadfile

# The unit tier alone, for the edit-test loop: about half a minute, nothing to start.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -rfEs -m unit

bench: $(VENV)/.installed
	$(PY) bench/transactions.py

# Issue 4's numbers: Slack -> Matrix vs. direct on one Synapse, added latency, Matrix -> Slack.
# All three run; the exit code is that of the last one that missed (3) or failed (1).
bench-slack: $(VENV)/.installed
	@status=0; for b in slack_synapse slack_latency slack_outbound; do \
		$(PY) bench/$$b.py || status=$$?; done; exit $$status

# Issue 15's email numbers: SMTP in (>= 300 mails/s, CPU per mail), a 20 MiB attachment's
# memory (< 1.5x), one message to 5,000 subscribers (< 10 s, flat memory). As bench-slack.
bench-email: $(VENV)/.installed
	@status=0; for b in email_inbound email_memory email_fanout; do \
		$(PY) bench/$$b.py || status=$$?; done; exit $$status

# Issue 15's idle memory: `bridge run` (Slack and email on) after start-up, under 60 MB.
bench-memory: $(VENV)/.installed
	$(PY) bench/idle_memory.py

# Issue 11's numbers: a 200-room migration plan applied to a fresh Synapse (< 2 min), then
# again (< 10 s, nothing to do).
bench-plan: $(VENV)/.installed
	$(PY) bench/plan_apply.py

# Issue 13's numbers: Slack -> encrypted room and encrypted room -> Slack against the same
# unencrypted workload, on a real Synapse (encrypted at least 0.7 of unencrypted).
bench-e2ee: $(VENV)/.installed
	$(PY) bench/encrypted_rooms.py

# Issue 12's numbers: `bridge import slack-export` of a generated 50,000-message export into
# a real Synapse, next to straight appservice sends (>= 0.8 of their rate), and its peak
# memory (< 200 MB). Several minutes; BENCH_ARGS="--messages 5000" for a quick run.
bench-import: $(VENV)/.installed
	$(PY) bench/slack_import.py $(BENCH_ARGS)

# Issue 14's retention job on a year of rows: speed, longest batch, what writers notice.
bench-retention: $(VENV)/.installed
	$(PY) bench/retention.py $(BENCH_ARGS)

# Issue 14's fault run: 10,000 mixed messages (Matrix, Slack, mail) on PostgreSQL while the
# bridge is SIGKILLed, Synapse and PostgreSQL restart, Slack answers 429/5xx and drops the
# socket and the mail relay is down (0 lost, 0 doubled, 0 out of order). Own Synapse and
# PostgreSQL cluster; about 15 minutes. BENCH_ARGS="--messages 600" for a quick run.
bench-faults: $(VENV)/.installed
	$(PY) bench/faults.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache .mypy_cache
