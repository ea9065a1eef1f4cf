# Shorthands for the README's two set-up commands (which need no make: a fresh machine may
# lack it; tools/bootstrap installs it) and the developers' lint and type check.
.PHONY: test demo check

test:
	tools/run-tests

demo:
	tools/run-demo

check:
	.venv/bin/ruff check .
	.venv/bin/mypy
