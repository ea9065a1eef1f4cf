# The two set-up commands of README.md; both install what they need and are idempotent.
.PHONY: test demo check

test:
	tools/bootstrap
	tools/run-tests

demo:
	tools/bootstrap
	tools/xenlab run -- .venv/bin/python tools/demo.py

check:
	.venv/bin/ruff check .
	.venv/bin/mypy
