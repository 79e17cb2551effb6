# Build output lives outside the clone so repeated runs (and CI) reuse it.
CARGO_TARGET_DIR ?= $(HOME)/.cache/nerite/target
export CARGO_TARGET_DIR
CARGO ?= cargo

.PHONY: build test unit e2e lint crds deps demo clean bench

build:
	$(CARGO) build --workspace --all-targets

## Everything: lint, unit tests, and the end-to-end suite against real RabbitMQ and the
## in-repo fake API server (installs RabbitMQ from apt when missing).
test: lint deps
	$(CARGO) test --workspace --no-fail-fast

unit:
	$(CARGO) test --workspace --lib --bins

e2e: deps
	$(CARGO) test --test e2e

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Benchmarks: each prints a table against its baseline, measured in the same run.
bench: deps
	$(CARGO) bench --profile dev --bench sqs

## Regenerate the CRD from the Rust types.
crds:
	$(CARGO) run -q --bin nerite -- crd > crds/scaledconsumers.nerite.dev.yaml

## Install what the tests and the demo need (RabbitMQ from Debian's packages, Python test
## tools into a virtualenv under ~/.cache/nerite).
deps:
	bash e2e/rabbitmq.sh install
	bash e2e/venv.sh >/dev/null
	bash e2e/moto.sh install

## Local RabbitMQ + the local fake cluster + the operator; publishes a burst and shows the
## scaling live.
demo: deps
	$(CARGO) run -q -p nerite-testkit --bin nerite-demo

clean:
	$(CARGO) clean
