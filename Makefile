# Build output lives outside the clone so repeated runs (and CI) reuse it.
CARGO_TARGET_DIR ?= $(HOME)/.cache/nerite/target
export CARGO_TARGET_DIR
CARGO ?= cargo

.PHONY: build test unit e2e lint crds deps demo bench clean

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

## Regenerate the CRD from the Rust types (and its copies in the Helm chart and the
## kustomize base).
crds:
	$(CARGO) run -q --bin nerite -- crd > crds/scaledconsumers.nerite.dev.yaml
	cp crds/scaledconsumers.nerite.dev.yaml charts/nerite/crds/
	cp crds/scaledconsumers.nerite.dev.yaml config/crd/

## Install what the tests and the demo need (RabbitMQ from Debian's packages, Python test
## tools into a virtualenv under ~/.cache/nerite, tansu built from crates.io into the same cache,
## a kubectl: the one on PATH or Debian's kubernetes-client unpacked into the cache).
deps:
	bash e2e/rabbitmq.sh install
	bash e2e/venv.sh >/dev/null
	bash e2e/moto.sh install
	bash e2e/kafka.sh install >/dev/null
	bash e2e/kubectl.sh >/dev/null

## Local RabbitMQ + the local fake cluster + the operator; publishes a burst and shows the
## scaling live.
demo: deps
	$(CARGO) run -q -p nerite-testkit --bin nerite-demo

## Every benchmark; each prints a table against a baseline measured in the same run.
.PHONY: bench bench-simulate bench-rabbitmq bench-sqs bench-kafka
bench: bench-simulate bench-rabbitmq bench-sqs bench-kafka

## Replay the built-in scenarios through nerite, KEDA + HPA (default and tuned), a static
## fleet and an oracle; prints the comparison table and writes one SVG chart per scenario.
bench-simulate:
	$(CARGO) run --release -q --bin nerite -- simulate --svg-dir $(CARGO_TARGET_DIR)/simulate

## RabbitMQ: management-API calls and bytes per tick, shared poller vs one call per object.
bench-rabbitmq: deps
	$(CARGO) run -q -p nerite-testkit --bin nerite-bench-rabbitmq

## SQS: API calls, SDK clients and tick time for 1–1,000 ScaledConsumers, nerite's shared
## client vs one client per object.
bench-sqs: deps
	$(CARGO) bench --profile dev --bench sqs

## Kafka: requests, bytes and time per tick for one group over 10–1,000 partitions and 100
## groups on one cluster; nerite's shared reader vs a client per object vs per-partition calls.
bench-kafka: deps
	$(CARGO) bench --profile dev --bench kafka

clean:
	$(CARGO) clean
