# dracpu task runner. Area recipes live in just/*.just so each area owns its file.
set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

import 'just/rig.just'
import 'just/proto.just'
import 'just/bench.just'
import 'just/kubelet.just'
import 'just/nri.just'
import 'just/kube.just'
import 'just/fuzz.just'
import 'just/deploy.just'

# Recipes find the pinned just and uv that hack/setup.sh put in .tools/bin.
export PATH := justfile_directory() / ".tools/bin" + ":" + env_var("PATH")

venv := justfile_directory() / ".venv"
py := venv / "bin/python"

# List recipes.
default:
    @just --list

# Install Python deps (pinned by uv.lock) into .venv.
setup:
    hack/setup.sh

# The main job for now: show this node's CPU topology and the slices dracpu would publish.
run *ARGS:
    {{venv}}/bin/dracpu inspect {{ARGS}} topology
    {{venv}}/bin/dracpu inspect {{ARGS}} slices

# `just run` stays the no-cluster quick look; this needs a kubeconfig and root (docs/run.md).
# Run the node daemon (`dracpu run`).
daemon *ARGS:
    {{venv}}/bin/dracpu run "$@"

# What the node daemon holds: claims, CPUs, shared pool, publisher and registration.
status *ARGS:
    {{venv}}/bin/dracpu status "$@"

# Fast tests (no rig): unit, property and peer tests that need nothing running.
test-unit *ARGS:
    {{py}} -m pytest -m "not e2e" "$@"

# Lint: ruff, mypy strict on dracpu/, import contracts, generated code up to date.
lint:
    {{venv}}/bin/ruff check dracpu tests bench hack
    {{venv}}/bin/ruff format --check dracpu tests bench hack
    {{venv}}/bin/mypy
    {{venv}}/bin/lint-imports

# Whole test suite: lint, rig, unit + e2e tests, rig down.
test:
    hack/test-all.sh

# The one-command demo: rig with the real kubelet, dracpu deployed from a local image, sample pods.
demo:
    hack/demo.sh

# Tear the demo down: the sample pods, dracpu, the rig.
demo-down:
    -{{py}} -m hack.demo_pods delete
    -hack/deploy.sh undeploy
    hack/rig/down.sh
