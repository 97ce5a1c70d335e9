# The two commands in README: `make run` (the main job) and `make test`. Both set everything up first.
.PHONY: run test test-fast setup lint index bench clean

setup:
	@scripts/setup.sh

run: setup
	.venv/bin/domainbot start

test: setup
	.venv/bin/ruff check bot training tests bench
	.venv/bin/python -m pytest -q -p no:cacheprovider

# Everything but the tests marked slow (the real model, training): about 1.5 min on 2 cores. `make test` runs all.
test-fast: setup
	.venv/bin/ruff check bot training tests bench
	.venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow"

lint: setup
	.venv/bin/ruff check bot training tests bench

index: setup
	.venv/bin/domainbot index

bench: setup
	.venv/bin/domainbot bench serve

clean:
	rm -rf .venv indexes/*/ indexes/router_fit.json var
